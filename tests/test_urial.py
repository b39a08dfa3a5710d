"""URIAL (arXiv 2312.01552): exact rendering for one and two turns, the stops, the fence stripping, and a base-model
responder for Magpie (fake engine for the prompt, real SmolLM2 for the stage)."""
import pytest

from pipeline.core.records import compact
from pipeline.engines import EngineSpec, load_engine, urial
from pipeline.synth import magpie


def test_one_turn_renders_exactly():
    assert urial.render([{"role": "user", "content": "What is 2+2?"}], prefix="PREFIX```\n") == (
        "PREFIX```\n\n# Query:\n```\nWhat is 2+2?\n```\n\n# Answer:\n```\n")


def test_two_turns_render_exactly_and_system_turns_are_not_shown():
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "A joke?"}]
    assert urial.render(history, prefix="P") == ("P\n# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello! How can I help?\n```\n"
                                                 "\n# Query:\n```\nA joke?\n```\n\n# Answer:\n```\n")
    with pytest.raises(ValueError, match="ends with a user turn"):
        urial.render(history[:3])


def test_the_prefix_has_three_examples_and_the_stops_and_fences_are_the_official_ones():
    assert urial.PREFIX.startswith("# Instruction") and urial.PREFIX.count("\n# Query:\n") == 3 == urial.PREFIX.count("\n# Answer:\n")
    assert urial.PREFIX.endswith("```\n") and urial.STOP == ("# Query", "# User")
    assert urial.answer("Sure! Here it is.\n```\n\n# Query") == "Sure! Here it is." and urial.answer(None) is None


def test_magpie_responds_through_urial_for_every_turn():
    engine = load_engine(EngineSpec.make("fake", "base", options={"script": {"# Query:\n```\nA joke?": "Why not!\n```\n"}}))
    df = magpie.plan(1, seed=0).with_columns(__import__("polars").Series("messages", [[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "A joke?"}]]))
    out = magpie.respond(df, engine=engine, mode="urial")
    assert compact(out["messages"][0].to_list())[-1] == {"role": "assistant", "content": "Why not!"}
    assert engine.calls[-1][1].stop == urial.STOP
    with pytest.raises(ValueError, match="valid: \\['chat', 'urial'\\]"):
        magpie.respond(df, engine=engine, mode="base")


@pytest.mark.real_llm
def test_a_urial_responder_on_smollm2(tmp_path):
    from pipeline.recipes import magpie_job

    summary = magpie_job(tmp_path, n=3, seed=0, engine=EngineSpec.make("llamacpp"), response_mode="urial",
                         response_max_tokens=64, response_temperature=0.0, filter_spec=[])
    import polars as pl

    rows = pl.read_parquet(summary["export"])
    answers = [m[-1]["content"] for m in rows["messages"].to_list() if m and m[-1]["role"] == "assistant"]
    assert answers and all("```" not in a and "# Query" not in a for a in answers)


def test_the_urial_job_answers_the_last_user_turn_of_each_conversation(tmp_path):
    import json

    import polars as pl

    from pipeline.recipes import urial_job

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "A joke?"},
         {"role": "assistant", "content": "an answer that is replaced"}],
        [{"role": "user", "content": "Name a color."}]]))
    engine = EngineSpec.make("fake", "base", options={"script": {"# Query:\n```\nA joke?": "Why not!\n```\n# Query",
                                                                 "Name a color.\n```": "\n```"}})
    summary = urial_job(tmp_path / "run", input_path=data, engine=engine)
    assert summary["stages"]["urial"]["drops"] == {"empty_response": 1}  # an empty answer is not a row
    rows = pl.read_parquet(summary["export"])
    assert [compact(c) for c in rows["messages"].to_list()] == [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                           {"role": "user", "content": "A joke?"}, {"role": "assistant", "content": "Why not!"}]]
    assert json.loads(rows["meta"][0])["urial"]["sampling"]["temperature"] == 0.0


@pytest.mark.real_llm
def test_the_urial_command_on_smollm2(tmp_path):
    import json

    import polars as pl
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in ["What is the capital of France?", "Name two primes."]))
    result = CliRunner().invoke(app, ["urial", "--input", str(data), "--out", str(tmp_path / "run"), "--engine", "llamacpp",
                                      "--max-tokens", "48"])
    assert result.exit_code == 0, result.output
    rows = pl.read_parquet(tmp_path / "run" / "export" / "data.parquet")
    assert rows.height >= 1 and all(m[-1]["role"] == "assistant" and m[-1]["content"] and "```" not in m[-1]["content"]
                                    for m in rows["messages"].to_list())
    assert "[urial](https://arxiv.org/abs/2312.01552)" in (tmp_path / "run" / "export" / "README.md").read_text()
