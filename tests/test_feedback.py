"""WildFeedback (arXiv 2408.15549): verdicts on scripted conversations, the pair's exact shape, counted drops, and the
command on the real SmolLM2."""
import json

import polars as pl
import pytest

from pipeline.core.records import meta_dicts
from pipeline.engines import EngineSpec, load_engine
from pipeline.synth import feedback

LAST = "The user's last message: "
SCRIPT = {LAST + "No, that is wrong": '{"verdict": "DSAT", "reason": "points out an error"}',
          LAST + "Thanks, that helps": '{"verdict": "SAT", "reason": "gratitude"}',
          LAST + "Also, what about Mars": '{"verdict": "NEITHER", "reason": "new question"}',
          LAST + "hmm": "I cannot decide",  # unparseable
          "State what the user wants": '{"preference": "Give the correct figure and show how it is computed."}',
          "respect this preference of the user: Give the correct figure": "It is 384,400 km: the mean orbital radius."}


def conversations():
    rows = {
        "dsat": [("user", "How far is the Moon?"), ("assistant", "About 100 km."), ("user", "No, that is wrong!"),
                 ("assistant", "Sorry, 384,400 km."), ("user", "Thanks, that helps.")],
        "sat": [("user", "Name a red fruit."), ("assistant", "A strawberry."), ("user", "Thanks, that helps.")],
        "neither": [("user", "Name a planet."), ("assistant", "Venus."), ("user", "Also, what about Mars?")],
        "unclear": [("user", "Name a colour."), ("assistant", "Blue."), ("user", "hmm")],
        "single": [("user", "Hello?"), ("assistant", "Hi!")],
    }
    return pl.DataFrame({"id": list(rows), "source": ["log"] * len(rows), "meta": ["{}"] * len(rows),
                         "messages": [[{"role": r, "content": c} for r, c in turns] for turns in rows.values()]})


def test_classify_finds_the_first_dsat_and_counts_the_rest():
    engine = load_engine(EngineSpec.make("fake", "judge", options={"script": SCRIPT}))
    out = feedback.classify(conversations(), engine=engine)
    assert dict(zip(out["id"], out["drop_reason"])) == {"dsat": None, "sat": "no_dsat", "neither": "no_dsat",
                                                         "unclear": "unparseable_verdict", "single": "no_follow_up"}
    verdicts = meta_dicts(out)[0]["wildfeedback"]
    assert verdicts["dsat_turn"] == 2 and [v["verdict"] for v in verdicts["verdicts"]] == ["DSAT", "SAT"]


def test_the_pair_is_the_conversation_up_to_the_bad_answer_with_it_rejected_and_the_preferred_answer_chosen():
    engine = load_engine(EngineSpec.make("fake", "judge", options={"script": SCRIPT}))
    classified = feedback.classify(conversations(), engine=engine).filter(pl.col("drop_reason").is_null())
    with_preference = feedback.extract_preferences(classified.drop("drop_reason"), engine=engine)
    assert meta_dicts(with_preference)[0]["wildfeedback"]["preference"].startswith("Give the correct figure")
    pairs = feedback.preferred_pairs(with_preference.drop("drop_reason"), engine=engine)
    prompt = [{"role": "user", "content": "How far is the Moon?"}]
    assert pairs["messages"][0].to_list() == prompt  # the preference is not in the training prompt
    assert pairs["rejected"][0].to_list() == prompt + [{"role": "assistant", "content": "About 100 km."}]
    assert pairs["chosen"][0].to_list() == prompt + [{"role": "assistant", "content": "It is 384,400 km: the mean orbital radius."}]
    assert pairs["drop_reason"].to_list() == [None]


def test_an_unparseable_preference_is_a_counted_drop():
    script = {**SCRIPT, "State what the user wants": "no json here"}
    engine = load_engine(EngineSpec.make("fake", "judge-2", options={"script": script}))
    classified = feedback.classify(conversations(), engine=engine).filter(pl.col("drop_reason").is_null())
    out = feedback.extract_preferences(classified.drop("drop_reason"), engine=engine)
    assert out["drop_reason"].to_list() == ["unparseable_preference"]


@pytest.mark.real_llm
def test_the_feedback_command_on_smollm2(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    logs = tmp_path / "logs.jsonl"
    rows = conversations().select("id", "messages").to_dicts()
    logs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["feedback", "--input", str(logs), "--out", str(tmp_path / "run"), "--engine",
                                      "llamacpp", "--max-tokens", "48"])
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()]
    stage = {e["stage"]: e for e in manifest if e.get("status") == "done"}
    classified = stage["feedback-classified"]
    assert classified["rows_in"] == 5 and classified["drops"].get("no_follow_up") == 1
    assert classified["rows_out"] + sum(classified["drops"].values()) == 5
    pairs = pl.read_parquet(tmp_path / "run" / "export" / "data.parquet")
    assert pairs.height == stage["feedback-pairs"]["rows_out"]
    for row in pairs.iter_rows(named=True):  # whatever SmolLM2 judged, every pair has the WildFeedback shape
        assert row["rejected"][:-1] == row["chosen"][:-1] == row["messages"] and row["messages"][-1]["role"] == "user"
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "https://arxiv.org/abs/2408.15549" in card and "SAT/DSAT rubric, in our words" in card
