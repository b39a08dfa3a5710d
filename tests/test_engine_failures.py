"""The standing rule in every stage that calls a model: a failed request makes its row
`engine_error:<kind>` (counted against --max-failure-rate by the runner), never a null score, an empty
response or a default. A scripted engine fails exactly the requests about row "b"."""
import json

import polars as pl
import pytest

from pipeline.core.rundir import ShardState, read_manifest
from pipeline.engines import EngineSpec, load_engine
from pipeline.recipes.runner import EngineFailures, run_stage
from pipeline.score import deita, ifd, reward, tags
from pipeline.select import magpie_presets
from pipeline.synth import codeclm, magpie, mcts

FAILED = [None, "engine_error:http_503", None]
MAGPIE = {"magpie": {"seed": 0, "index": 0, "row_seed": 7}}


def conversations(meta=None):
    questions = ["Explain rain.", "FAILME: explain snow.", "Explain hail."]
    return pl.DataFrame({"id": ["a", "b", "c"], "source": "test",
                         "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": f"About {q}"}]
                                      for q in questions],
                         "meta": [json.dumps(meta or {})] * 3})


def failing(name="failing-engine"):
    return load_engine(EngineSpec.make("fake", name, options={"fail_on": ["FAILME"]}))


def user_turns(df):
    return df.with_columns(pl.col("messages").list.head(1))


STAGES = {
    "deita": lambda tmp: deita.score(conversations(), engine=failing()),
    "tags": lambda tmp: tags.tag(conversations(), engine=failing(), tags=("quality", "difficulty"), structured=False),
    "reward": lambda tmp: reward.score_rewards(conversations(), engine=failing()),
    "reward_difference": lambda tmp: reward.reward_difference(conversations(), engine=load_engine(EngineSpec.make("fake", "judge")),
                                                              base=failing("base")),
    "ifd": lambda tmp: ifd.score(conversations(), engine=failing()),
    "magpie_dpo": lambda tmp: magpie_presets.preference_pairs(user_turns(conversations()), engine=failing(), k=2),
    "magpie_respond": lambda tmp: magpie.respond(user_turns(conversations(MAGPIE)), engine=failing()),
    "magpie_follow_up": lambda tmp: magpie.follow_up(conversations(MAGPIE), engine=failing()),
    "codeclm": lambda tmp: codeclm.contrastive(
        user_turns(conversations({"codeclm": {"metadata": {"use_case": "weather", "skills": ["physics"]}, "iteration": 1,
                                              "history": []}})), engine=failing(), keep_unresolved=True, max_iterations=1),
    "mcts": lambda tmp: mcts.search_stage(user_turns(conversations()), engine=failing(), iterations=1, responses=1,
                                          checkpoint=ShardState(tmp / "state.json")),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_failed_request_marks_only_its_row(stage, tmp_path):
    reasons = STAGES[stage](tmp_path)["drop_reason"].to_list()
    # prompt_logprobs reports a failed request as a missing result: its kind is the call's name
    assert reasons[1] == ("engine_error:prompt_logprobs" if stage == "ifd" else "engine_error:http_503")
    # the other rows may be dropped for what the fake model answered (unparseable), never as engine errors
    assert not any(r and r.startswith("engine_error") for r in (reasons[0], reasons[2])), reasons


def test_the_runner_counts_them_and_stops_past_the_rate(tmp_path):
    spec = EngineSpec.make("fake", "failing-engine", options={"fail_on": ["FAILME"]})
    with pytest.raises(EngineFailures, match="1 of 3 rows failed"):
        run_stage(tmp_path, "scored", deita.score, source=conversations(), engine=spec, max_failure_rate=0.1)
    run_stage(tmp_path, "scored-tolerant", deita.score, source=conversations(), engine=spec, max_failure_rate=0.5)
    [done] = [e for e in read_manifest(tmp_path) if e["status"] == "done"]
    assert done["drops"] == {"engine_error:http_503": 1} and done["rows_out"] == 2


def test_mcts_trees_that_met_a_failure_are_searched_anew_on_resume(tmp_path):
    checkpoint = ShardState(tmp_path / "state.json")
    df = user_turns(conversations())
    first = mcts.search_stage(df, engine=failing(), iterations=1, responses=1, checkpoint=checkpoint)
    assert first["drop_reason"].to_list() == FAILED
    healthy = load_engine(EngineSpec.make("fake", "healthy"))
    again = mcts.search_stage(df, engine=healthy, iterations=1, responses=1, checkpoint=checkpoint)
    assert again["drop_reason"].to_list() == [None, None, None]
