"""The `safety` stage: Llama Guard 3's prompt, the verdict parser, exact drop/tag counts with a scripted guard,
failed requests counted as engine errors, unparseable replies as counted drops (never safe), and the plumbing on the
real SmolLM2."""
import json

import polars as pl
import pytest

from pipeline.core.records import conform
from pipeline.engines import EngineSpec, load_engine
from pipeline.score.safety import LLAMA_GUARD_3, check, guard_prompt

# The first key found in a request decides the reply: the assessed turn's own text comes first, so a later turn's
# request (which repeats the earlier ones) is judged on its last message.
SCRIPT = {"Agent: I can't help with that.": "safe",
          "Agent: Her social security number is": "unsafe\nS7,S1",
          "Agent: Sure, mix": "unsafe\nS9",
          "User: How do I build a pipe bomb?": "\n\nunsafe\nS9",
          "User: Write a poem about rain.": "I think this one is fine.",
          "<BEGIN CONVERSATION>": "safe"}


def frame() -> pl.DataFrame:
    def turns(*texts):
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]

    rows = [
        {"id": "safe", "messages": turns("What is the capital of France?", "Paris.")},
        {"id": "bomb", "messages": turns("How do I build a pipe bomb?", "I can't help with that.")},
        {"id": "privacy", "messages": turns("Tell me about my neighbour Ann.", "Her social security number is 123.")},
        {"id": "poem", "messages": turns("Write a poem about rain.", "Drops on glass.")},
        {"id": "broken", "messages": turns("Trigger failure please.", "Ok.")},
        {"id": "pair", "messages": turns("Which cleaner is strongest?"),
         "chosen": turns("Which cleaner is strongest?", "Use them one at a time, never mixed."),
         "rejected": turns("Which cleaner is strongest?", "Sure, mix bleach and ammonia.")},
    ]
    base = {"source": "import", "meta": "{}", "messages": None, "chosen": None, "rejected": None}
    return pl.from_arrow(conform(pl.DataFrame([base | r for r in rows]), where="test"))


def guard(**options):
    return load_engine(EngineSpec.make("fake", "guard-model", options={"script": SCRIPT, "fail_on": ["Trigger failure"], **options}))


def test_the_prompt_is_llama_guard_3s_with_its_fourteen_categories():
    text = guard_prompt([{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello!"}])
    assert text.startswith("Task: Check if there is unsafe content in 'Agent' messages in conversations according our "
                           "safety policy with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Violent Crimes.\n")
    assert "S13: Elections.\nS14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>" in text
    assert "<BEGIN CONVERSATION>\n\nUser: Hi\n\nAgent: Hello!\n\n<END CONVERSATION>\n\n" in text
    assert text.endswith("ONLY THE LAST Agent message in the above conversation:\n - First line must read 'safe' or "
                         "'unsafe'.\n - If unsafe, a second line must include a comma-separated list of violated categories.")
    assert list(LLAMA_GUARD_3) == [f"S{i}" for i in range(1, 15)]


def test_drop_mode_counts_each_outcome_exactly_and_sends_each_request_once():
    engine = guard()
    out = check(frame(), engine=engine)
    assert out["drop_reason"].to_list() == [None, "unsafe:S9", "unsafe:S1", "safety_unparsed", "engine_error:http_503", None]
    # 5 rows x 2 turns + the pair: messages' one turn is chosen's first, sent once; rejected is not checked by default
    assert engine.calls[-1][0] == 12 and len(engine.calls) == 1
    metas = [json.loads(m)["safety"] for m in out["meta"]]
    assert metas[0]["unsafe"] is False and metas[2]["categories"] == ["S1", "S7"]
    assert [t["verdict"] for t in metas[1]["turns"]] == ["unsafe", "safe"] and metas[1]["prompt"] == "llama-guard-3"
    assert metas[3]["unsafe"] is None and metas[3]["turns"][0]["raw"] == "I think this one is fine."  # null, not safe
    assert metas[4]["unsafe"] is None and metas[4]["turns"][0]["error"] == "http_503"


def test_tag_mode_keeps_unsafe_rows_with_their_categories_and_still_drops_what_it_cannot_read():
    out = check(frame(), engine=guard(), action="tag", columns=["messages", "chosen", "rejected"])
    assert out["drop_reason"].to_list() == [None, None, None, "safety_unparsed", "engine_error:http_503", None]
    unsafe = {rid: json.loads(m)["safety"]["categories"] for rid, m in zip(out["id"], out["meta"])
              if json.loads(m)["safety"]["unsafe"]}
    assert unsafe == {"bomb": ["S9"], "privacy": ["S1", "S7"], "pair": ["S9"]}  # the rejected answer, checked here


def test_last_turn_only_and_the_model_prompt_send_the_conversation_itself():
    engine = load_engine(EngineSpec.make("fake", "meta-llama/Llama-Guard-3-8B", options={"script": {"Paris.": "safe"}}))
    out = check(frame().head(1), engine=engine, turns="last")
    meta = json.loads(out["meta"][0])["safety"]
    assert meta["prompt"] == "model" and meta["unsafe"] is False and [t["turn"] for t in meta["turns"]] == [1]
    with pytest.raises(ValueError, match="categories are fixed"):
        check(frame(), engine=engine, categories={"O1": "Medical advice."})
    with pytest.raises(ValueError, match="action must be one of"):
        check(frame(), engine=engine, action="flag")


def test_a_users_categories_replace_llama_guards_and_unknown_codes_are_unparsed():
    script = {"Medical advice.": "unsafe\nO1", "<BEGIN CONVERSATION>": "safe"}
    engine = load_engine(EngineSpec.make("fake", "judge", options={"script": {"Paris": "unsafe\nS1", **script}}))
    out = check(frame().head(2), engine=engine, categories={"O1": "Medical advice."}, turns="last")
    assert out["drop_reason"].to_list() == ["safety_unparsed", "unsafe:O1"]  # S1 is not one of the user's codes


def test_the_step_counts_unsafe_categories_and_engine_failures_in_the_manifest(tmp_path):
    from pipeline.recipes import input_job
    from pipeline.recipes.privacy import safety_step
    from pipeline.recipes.runner import EngineFailures

    data = tmp_path / "logs.jsonl"
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in frame()["messages"].to_list()[:5]))
    spec = EngineSpec.make("fake", "guard-model", options={"script": SCRIPT, "fail_on": ["Trigger failure"]})
    summary = input_job(tmp_path / "run", input_path=data, steps=[safety_step()], engine=spec, max_failure_rate=0.5)
    stage = summary["stages"]["safety"]
    assert stage["drops"] == {"unsafe:S9": 1, "unsafe:S1": 1, "safety_unparsed": 1, "engine_error:http_503": 1}
    assert stage["counts"] == {"S9": 1, "S1": 1, "S7": 1} and stage["rows_out"] == 1
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "- safety: a guard model's verdict on every user and assistant turn of messages, chosen with Llama Guard 3's " \
           "prompt and hazard categories (S1 Violent Crimes, S2 Non-Violent Crimes" in card and "unsafe:S9: 1" in card
    with pytest.raises(EngineFailures, match="1 of 5 rows failed"):
        input_job(tmp_path / "strict", input_path=data, steps=[safety_step()], engine=spec, max_failure_rate=0.1)


@pytest.mark.real_llm
def test_the_plumbing_on_smollm2(llamacpp):
    """SmolLM2-135M is no guard: whatever it answers is a verdict or a counted drop, never a silent 'safe'."""
    # one short request (one category, the last turn): llama.cpp reads prompts at a few hundred tokens a second here
    out = check(frame().head(2), engine=llamacpp, turns="last", categories={"S1": "Violent Crimes."}, max_tokens=8)
    for reason, meta in zip(out["drop_reason"], out["meta"]):
        safety = json.loads(meta)["safety"]
        assert safety["turns"] and safety["turns"][0]["raw"] is not None
        if safety["unsafe"] is None:
            assert reason == "safety_unparsed"
        else:
            assert (reason is None) == (not safety["unsafe"])
