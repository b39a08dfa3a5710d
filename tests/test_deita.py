import math

import polars as pl
import pytest

from pipeline.score import deita
from pipeline.core.records import turns
from pipeline.engines import EngineSpec, load_engine, render


def test_prompts_are_the_official_strings_byte_for_byte():
    assert deita.COMPLEXITY_PROMPT.format(instruction="Q") == (
        "You are a helpful assistant. Please identify the complexity score of the following user query. \n##Query: Q  \n##Complexity: ")
    assert deita.QUALITY_PROMPT.format(instruction="Q", output="A") == (
        "You are a helpful assistant. Please identify the quality score of the Response corresponding to the Question. "
        "\n #Question#:\nQ\n#Response#:\nA \n##Quality: ")


def test_expected_score_over_the_six_digits_only():
    assert deita.expected_score({d: 0.0 for d in "123456"}) == 3.5
    assert deita.expected_score({d: 0.0 for d in "123456"} | {"The": 5.0}) == 3.5  # other tokens do not count
    one_hot = {d: (0.0 if d == "5" else -1e4) for d in "123456"}
    assert deita.expected_score(one_hot) == 5.0
    shifted = {d: -0.7 * int(d) for d in "123456"}
    assert math.isclose(deita.expected_score(shifted), deita.expected_score({d: v - 3.0 for d, v in shifted.items()}))
    assert deita.expected_score({d: 0.0 for d in "12345"}) is None  # "6" not returned: null, never 3.0
    assert deita.expected_score(None) is None


def test_turn_splitting_gives_an_empty_answer_to_a_trailing_question():
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}]
    assert turns(conversation) == [("a", "b"), ("c", "")]


def frame(conversations):
    return pl.DataFrame({"id": [str(i) for i in range(len(conversations))], "source": ["t"] * len(conversations),
                         "messages": conversations, "meta": ["{}"] * len(conversations)})


def test_multi_turn_score_is_the_sum_of_complexity_times_quality_in_one_engine_call():
    complexity_2 = {d: (0.0 if d == "2" else -1e4) for d in "123456"}
    quality_4 = {d: (0.0 if d == "4" else -1e4) for d in "123456"}
    engine = load_engine(EngineSpec.make("fake", "deita-fake", options={
        "top_logprobs": {"##Complexity": complexity_2, "##Quality": quality_4}}))
    df = frame([[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                 {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}],
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    out = deita.score(df, engine=engine)
    assert len(engine.calls) == 1 and engine.calls[0][0] == 6 and engine.calls[0][1].max_tokens == 1
    assert out["complexity"].to_list() == [[2.0, 2.0], [2.0]] and out["quality"].to_list() == [[4.0, 4.0], [4.0]]
    assert out["deita_score"].to_list() == [16.0, 8.0]


def digit(d: str) -> dict:
    return {k: (0.0 if k == d else -1e4) for k in "123456"}


def test_two_scorer_models_one_step_each(tmp_path):
    """deita's published scorers are two models: complexity from one, quality from the other, product per turn."""
    from pipeline.recipes import curate_job

    complexity_model = {"backend": "fake", "model": "complexity-scorer", "options": {"top_logprobs": {"": digit("5")}}}
    quality_model = EngineSpec.make("fake", "quality-scorer", options={"top_logprobs": {"": digit("2")}})
    data = tmp_path / "data.jsonl"
    data.write_text("".join('{"messages": [{"role": "user", "content": "Question number %d, please."}, '
                            '{"role": "assistant", "content": "a"}]}\n' % i for i in range(3)))
    summary = curate_job(tmp_path / "run", input_path=data, engine=quality_model, complexity_engine=complexity_model,
                         dedup=(), k=2, shard_size=2)
    assert list(summary["stages"])[-3:] == ["scored-complexity", "scored", "selected"]
    out = pl.read_parquet(summary["export"])
    assert out["complexity"].to_list() == [[5.0]] * 2 and out["quality"].to_list() == [[2.0]] * 2
    assert out["deita_score"].to_list() == [10.0, 10.0]
    with pytest.raises(ValueError, match="run part='complexity' first"):
        deita.score(frame([[{"role": "user", "content": "q"}]]), engine=load_engine(quality_model), part="quality")
    with pytest.raises(ValueError, match="part in \\['both', 'complexity', 'quality'\\]"):
        deita.score(frame([[{"role": "user", "content": "q"}]]), engine=load_engine(quality_model), part="all")


def test_missing_digits_give_null_scores():
    engine = load_engine(EngineSpec.make("fake", "deita-missing", options={"top_logprobs": {"##Quality": {"1": 0.0, "The": 0.0}}}))
    out = deita.score(frame([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]), engine=engine)
    assert out["complexity"].to_list() == [[3.5]] and out["quality"].to_list() == [[None]]
    assert out["deita_score"].to_list() == [None]


def test_judge_mode_opens_the_assistant_reply_with_the_label():
    engine = load_engine(EngineSpec.make("fake", "deita-judge"))
    prompt = render(engine.template, deita._prompt(engine, deita.COMPLEXITY_PROMPT.format(instruction="Q"), "judge"))
    assert prompt.startswith("<|im_start|>user\nYou are a helpful assistant.") and prompt.endswith("<|im_start|>assistant\n##Complexity: ")
    with pytest.raises(ValueError, match="mode must be in \\['auto', 'scorer', 'judge'\\]"):
        deita.score(frame([[{"role": "user", "content": "q"}]]), engine=engine, mode="direct")


@pytest.mark.real_llm
@pytest.mark.parametrize("mode", ["scorer", "judge"])
def test_smollm2_scores_every_turn(llamacpp, mode):
    df = frame([[{"role": "user", "content": "Explain how vaccines train the immune system."},
                 {"role": "assistant", "content": "Vaccines expose the body to a harmless part of a germ so it learns to fight it."}],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])
    out = deita.score(df, engine=llamacpp, mode=mode)
    values = [v for row in out["complexity"].to_list() + out["quality"].to_list() for v in row]
    assert all(v is not None and 1.0 < v < 6.0 for v in values)
    assert out["deita_score"].null_count() == 0


def test_an_answer_longer_than_the_context_is_cut_to_fit_and_noted():
    """deita's scorers have 2048 positions: a quality prompt around a longer answer is scored with the answer cut from
    its end (the label line kept), on the record as a StageWarning; a complexity prompt that fits is left alone."""
    import warnings

    from pipeline.core.rundir import StageWarning

    long_answer = " ".join(f"w{i}" for i in range(300))
    engine = load_engine(EngineSpec.make("fake", "scorer", options={"context_length": 120}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = deita.score(frame([[{"role": "user", "content": "why is the sky blue"},
                                  {"role": "assistant", "content": long_answer}]]), engine=engine)
    assert out["drop_reason"].to_list() == [None] and out["deita_score"].null_count() == 0
    assert [str(w.message) for w in caught if issubclass(w.category, StageWarning)] == [deita.CUT_WARNING]
    fitted, cut = deita.fit_to_context(engine, lambda i, o: deita.QUALITY_PROMPT.format(instruction=i, output=o),
                                       [("why is the sky blue", long_answer)])
    assert cut == 1 and engine.count_tokens(fitted)[0] < 120 and fitted[0].endswith(" \n##Quality: ")
    assert "why is the sky blue" in fitted[0] and "w0 w1" in fitted[0] and "w299" not in fitted[0]


@pytest.mark.real_llm
def test_a_long_answer_is_scored_within_llamacpps_context(llamacpp):
    """The same on the real SmolLM2 (llama.cpp, n_ctx 2048): a ~3000-token answer gets a score, not too_long."""
    answer = "The sky looks blue because air scatters short wavelengths of sunlight more than long ones. " * 200
    out = deita.score(frame([[{"role": "user", "content": "Why is the sky blue?"},
                              {"role": "assistant", "content": answer}]]), engine=llamacpp)
    assert llamacpp.count_tokens([answer])[0] > llamacpp.context_length
    assert out["drop_reason"].to_list() == [None] and out["deita_score"].null_count() == 0
