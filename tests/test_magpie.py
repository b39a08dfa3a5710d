import polars as pl
import pytest

from pipeline.synth import magpie
from pipeline.engines.templates import OFFICIAL
from pipeline.engines import EngineSpec, load_engine
from pipeline.core.records import compact, conform, meta_dicts


def engine(**options):
    return load_engine(EngineSpec.make("fake", "fake-model", options=options))


def test_plan_ids_and_seeds_depend_only_on_seed_and_index():
    a, b = magpie.plan(5, seed=1), magpie.plan(3, seed=1)
    assert a["id"].head(3).to_list() == b["id"].to_list()
    assert a["id"].to_list() != magpie.plan(5, seed=2)["id"].to_list()
    conform(a)


def test_synthesize_sends_the_derived_prefix_in_one_batched_call():
    e = engine(script={"<|im_start|>user\n": "How do I bake bread?\nExtra line"})
    out = magpie.synthesize(magpie.plan(4, seed=0), engine=e)
    assert len(e.calls) == 1 and e.calls[0][0] == 4
    sampling = e.calls[0][1]
    assert sampling.stop == ("<|im_end|>", "<|im_start|>", "\n") and sampling.temperature == magpie.DERIVED_INSTRUCTION_TEMPERATURE
    assert compact(out["messages"].to_list()[0]) == [{"role": "user", "content": "How do I bake bread?"}]
    turn = meta_dicts(out)[0]["magpie"]["turns"][0]["user"]
    assert turn["finish_reason"] == "stop" and turn["pre_query"] == "template" and turn["engine"] == "fake"
    assert len({m["magpie"]["turns"][0]["user"]["seed"] for m in meta_dicts(out)}) == 4  # each request seeded
    conform(out)


def test_official_family_uses_pinned_prefix_stops_and_sanitizer(tmp_path):
    import json
    from pathlib import Path

    # the model's own template (an HF tokenizer directory), which agrees with the registry's Llama-3 entry
    template = (Path(__file__).parent / "data" / "templates" / "meta-llama-Meta-Llama-3-8B-Instruct.jinja").read_text()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    e = load_engine(EngineSpec.make("fake", "meta-llama/Meta-Llama-3-8B-Instruct", template=str(tmp_path),
                                    options={"script": {"user<|end_header_id|>": "Question: Why? Because"}}))
    query = magpie.pre_query(e)
    assert query.prefix == OFFICIAL["llama-3"].pre_query_template and query.stop[-2:] == ("assistant", "\n")
    out = magpie.synthesize(magpie.plan(1, seed=0), engine=e)
    assert compact(out["messages"][0].to_list()) == [{"role": "user", "content": "Why?"}]
    assert meta_dicts(out)[0]["magpie"]["turns"][0]["user"]["sanitize_class"] == 99.1
    assert magpie.pre_query(e, task="math").prefix == OFFICIAL["llama-3"].task_templates["math"]


def test_task_control_on_a_derived_template_puts_the_task_prompt_in_the_system_turn():
    query = magpie.pre_query(engine(), task="code")
    assert query.prefix.startswith("<|im_start|>system\nYou are an AI assistant designed to provide helpful, step-by-step guidance on coding")
    assert magpie.pre_query(engine(), task="translation").stop[-1] != "\n"  # official: no early stop for translation
    with pytest.raises(ValueError, match="valid: \\['math', 'code', 'translation'\\]"):
        magpie.pre_query(engine(), task="poetry")


def test_failed_requests_are_marked_never_empty_rows():
    out = magpie.synthesize(magpie.plan(4, seed=0), engine=engine(fail_every=2))
    assert out["drop_reason"].to_list() == [None, "engine_error:http_503", None, "engine_error:http_503"]
    assert out["messages"].to_list()[1] == []


def test_respond_then_follow_up_then_respond_builds_two_turns():
    e = engine(script={"<|im_start|>system\nYou are a helpful Al": "And then?", "<|im_start|>assistant\n": "Answer."})
    df = magpie.synthesize(magpie.plan(2, seed=0), engine=e)
    df = magpie.respond(df, engine=e)
    df = magpie.follow_up(df, engine=e)
    follow_prompt_sampling = e.calls[-1][1]
    assert follow_prompt_sampling.temperature == 1.0
    df = magpie.respond(df, engine=e)
    roles = [[m["role"] for m in c] for c in df["messages"].to_list()]
    assert roles == [["user", "assistant", "user", "assistant"]] * 2
    assert df["messages"].to_list()[0][2]["content"] == "And then?"
    turns = meta_dicts(df)[0]["magpie"]["turns"]
    assert [sorted(t) for t in turns] == [["assistant", "user"], ["assistant", "user"]]
    conform(df.drop("drop_reason"))


def test_respond_requires_a_trailing_user_turn():
    df = magpie.plan(1, seed=0)
    with pytest.raises(ValueError, match="row 0 .* does not end with a user turn"):
        magpie.respond(df, engine=engine())


def test_respond_uses_the_chat_template_and_greedy_default():
    e = engine()
    df = magpie.synthesize(magpie.plan(1, seed=0), engine=e)
    magpie.respond(df, engine=e)
    assert e.calls[-1][1].temperature == 0.0
    assert isinstance(df, pl.DataFrame)


def test_sampling_follows_the_official_family_and_the_cpu_profile_pins_its_own(tmp_path):
    import json
    from pathlib import Path

    from pipeline.recipes.magpie import CPU_PROFILE, magpie_steps

    template = (Path(__file__).parent / "data" / "templates" / "meta-llama-Meta-Llama-3-8B-Instruct.jinja").read_text()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    e = load_engine(EngineSpec.make("fake", "meta-llama/Llama-3.1-8B-Instruct", template=str(tmp_path)))
    out = magpie.respond(magpie.synthesize(magpie.plan(1, seed=0), engine=e), engine=e)
    turn = meta_dicts(out)[0]["magpie"]["turns"][0]
    assert (turn["user"]["sampling"]["temperature"], turn["user"]["sampling"]["max_tokens"]) == (0.8, 1024)  # llama3.1 script
    assert {k: turn["assistant"]["sampling"][k] for k in ("temperature", "top_p", "max_tokens")} == {
        "temperature": 0.6, "top_p": 0.9, "max_tokens": magpie.PAPER_RESPONSE_MAX_TOKENS}
    derived = engine()  # a model without an official entry: the official scripts' defaults, greedy responses
    before = len(derived.calls)
    magpie.respond(magpie.synthesize(magpie.plan(1, seed=0), engine=derived), engine=derived)
    (_, instructions), (_, responses) = derived.calls[before:]
    assert (instructions.temperature, instructions.max_tokens) == (0.7, magpie.PAPER_INSTRUCTION_MAX_TOKENS)
    assert (responses.temperature, responses.top_p, responses.max_tokens) == (0.0, 1.0, magpie.PAPER_RESPONSE_MAX_TOKENS)

    def settings(**options):
        steps = {s.name: s.params for s in magpie_steps(**options)}
        return steps["instructions"]["max_tokens"], steps["responses"]
    assert settings(model="meta-llama/Meta-Llama-3-70B-Instruct") == (None, {"temperature": None, "top_p": None,
                                                                            "max_tokens": None, "mode": "chat"})
    cpu = (CPU_PROFILE["instruction_max_tokens"], {"temperature": CPU_PROFILE["response_temperature"],
                                                   "top_p": CPU_PROFILE["response_top_p"], "max_tokens": CPU_PROFILE["response_max_tokens"],
                                                   "mode": "chat"})
    assert settings(model="smollm2") == settings(profile="cpu", model="meta-llama/Meta-Llama-3-70B-Instruct") == cpu
    assert settings(model="smollm2", response_max_tokens=64)[1]["max_tokens"] == 64  # an explicit setting wins
    with pytest.raises(ValueError, match="valid: \\['auto', 'paper', 'cpu'\\]"):
        magpie_steps(profile="fast")


def test_the_official_logits_processor_is_on_for_llama_3_1_and_an_engine_without_them_says_so(tmp_path):
    import json
    from pathlib import Path

    from pipeline.core.rundir import StageWarning
    from pipeline.synth.magpie_logits import LLAMA3_MARKDOWN_HEADERS

    template = (Path(__file__).parent / "data" / "templates" / "meta-llama-Meta-Llama-3-8B-Instruct.jinja").read_text()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    e = load_engine(EngineSpec.make("fake", "meta-llama/Llama-3.1-8B-Instruct", template=str(tmp_path)))
    with pytest.warns(StageWarning, match="cannot apply Magpie's 'de-markdown' logits processor"):
        out = magpie.synthesize(magpie.plan(1, seed=0), engine=e)
    assert e.calls[-1][1].first_token_ban == LLAMA3_MARKDOWN_HEADERS  # recorded in the row's provenance too
    assert meta_dicts(out)[0]["magpie"]["turns"][0]["user"]["sampling"]["first_token_ban"] == list(LLAMA3_MARKDOWN_HEADERS)
    magpie.synthesize(magpie.plan(1, seed=0), engine=e, logits_processor="none")
    assert e.calls[-1][1].first_token_rule is None
    derived = engine()  # no official processor for other models
    magpie.synthesize(magpie.plan(1, seed=0), engine=derived)
    assert derived.calls[-1][1].first_token_rule is None
