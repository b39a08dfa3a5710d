import json

import polars as pl
import pytest

from pipeline.select import magpie_presets as magpie_curate
from pipeline.engines import EngineSpec, load_engine
from pipeline.core.records import meta_dicts

# A hand-made tagged frame: one row per way to fail, plus rows that pass everything.
ROWS = [  # id, quality, difficulty, min distance, reward, base reward, response chars, instruction
    ("long_good", "good", "medium", 0.3, -5.0, -9.0, 900, "Plan a trip to Rome?"),
    ("short_good", "excellent", "hard", 0.2, -3.0, -6.0, 100, "Prove that sqrt 2 is irrational?"),
    ("easy_good", "good", "easy", 0.4, -2.0, -1.0, 700, "What is 2 + 2?"),
    ("very_easy", "average", "very easy", 0.5, -4.0, -8.0, 800, "Say hi?"),
    ("poor", "poor", "hard", 0.3, -1.0, -9.0, 1000, "Thing?"),
    ("copy", "good", "medium", 0.0, -1.0, -9.0, 950, "Plan a trip to Rome!"),
    ("low_reward", "good", "hard", 0.3, -13.0, -20.0, 990, "Write code?"),
    ("colon", "excellent", "medium", 0.3, -2.0, -5.0, 600, "List the following:"),
]


def frame():
    return pl.DataFrame({
        "id": [r[0] for r in ROWS], "source": "magpie", "meta": "{}",
        "input_quality": [r[1] for r in ROWS], "difficulty": [r[2] for r in ROWS],
        "min_neighbor_distance": [r[3] for r in ROWS], "instruct_reward": [r[4] for r in ROWS],
        "base_reward": [r[5] for r in ROWS],
        "dup_of": [None, None, None, None, None, "long_good", None, None],
        "messages": [[{"role": "user", "content": r[7]}, {"role": "assistant", "content": "x" * r[6]}] for r in ROWS]})


@pytest.mark.parametrize("preset, k, kept, drops", [
    # Air: quality >= good, difficulty >= medium, min dist > 0, reward diff > 0; longest last
    ("air", 3, ["low_reward", "long_good", "colon"],
     {"quality_at_least": 2, "difficulty_at_least": 1, "min_neighbor_distance_above": 1, "not_longest_k": 1}),
    # Pro: quality >= average, min dist > 0, reward > -12
    ("pro", 10, ["long_good", "very_easy", "easy_good", "colon", "short_good"],
     {"quality_at_least": 1, "min_neighbor_distance_above": 1, "reward_above": 1}),
    ("pro2", 2, ["long_good", "easy_good"],
     {"quality_at_least": 2, "difficulty_at_least": 0, "min_neighbor_distance_above": 1, "reward_above": 1, "not_longest_k": 2}),
    ("pro3", 2, ["poor", "long_good"], {"min_neighbor_distance_above": 1, "reward_above": 1, "not_longest_k": 4}),
    ("pro4", 10, ["low_reward", "long_good", "colon", "short_good"],  # reward difference, not absolute reward
     {"quality_at_least": 2, "min_neighbor_distance_above": 1, "reward_difference_above": 1}),
    ("pro5", 1, ["long_good", "short_good", "easy_good", "colon"],  # no longest-k: all that pass, row order
     {"quality_at_least": 2, "min_neighbor_distance_above": 1, "reward_above": 1}),
    ("pro6", 4, ["very_easy", "easy_good", "poor", "long_good"],  # 2 longest easy + 2 longest harder
     {"min_neighbor_distance_above": 1, "reward_above": 1, "not_longest_k": 2}),
])
def test_presets(preset, k, kept, drops):
    out = magpie_curate.magpie_filter(frame(), preset=preset, k=k)
    assert out.filter(pl.col("drop_reason").is_null())["id"].to_list() == kept
    counts = dict(out.filter(pl.col("drop_reason").is_not_null()).group_by("drop_reason").len().iter_rows())
    assert counts == {r: n for r, n in drops.items() if n}


def test_notebook_variant_drops_colons_and_repeats_then_shuffles_with_seed_42():
    out = magpie_curate.magpie_filter(frame(), preset="notebook", k=3)
    kept = out.filter(pl.col("drop_reason").is_null())["id"].to_list()
    assert sorted(kept) == ["easy_good", "long_good", "short_good"]
    assert kept == magpie_curate.magpie_filter(frame(), preset="notebook", k=3).filter(pl.col("drop_reason").is_null())["id"].to_list()
    reasons = dict(zip(out["id"].to_list(), out["drop_reason"].to_list()))
    assert reasons["colon"] == "no_trailing_colon" and reasons["copy"] == "first_of_repeats" and reasons["low_reward"] == "reward_above"


def test_thresholds_can_be_replaced_and_unknown_presets_are_listed():
    out = magpie_curate.magpie_filter(frame(), preset="pro3", k=10, reward_threshold=-3.5)
    assert sorted(out.filter(pl.col("drop_reason").is_null())["id"].to_list()) == ["colon", "easy_good", "poor", "short_good"]
    with pytest.raises(ValueError, match="valid: \\['air', 'pro', 'pro2'"):
        magpie_curate.magpie_filter(frame(), preset="ultra")


def dpo_engine(name, ratings):
    """Responses "r0".."r4" in order per request; the judge rates response "rj" with ratings[j] (one-hot digit)."""
    script = {f"[Assistant response]\nresp{j}\n": None for j in range(len(ratings))}
    top = {key: {d: (0.0 if int(d) == ratings[j] else -1e4) for d in "123456789"} for j, key in enumerate(script)}
    engine = load_engine(EngineSpec.make("fake", name, options={"top_logprobs": top}))
    counter = iter(range(10**6))
    engine._reply = lambda prompt, seed, sample=0: f"resp{next(counter) % len(ratings)}"
    return engine


def pairs_frame(n=1):
    return pl.DataFrame({"id": [f"q{i}" for i in range(n)], "source": "magpie", "meta": "{}",
                         "messages": [[{"role": "user", "content": f"Question {i}?"}] for i in range(n)]})


def test_pairs_pick_best_and_worst_first_occurrence_on_ties():
    engine = dpo_engine("dpo-ties", [3, 9, 1, 9, 1])
    out = magpie_curate.preference_pairs(pairs_frame(), engine=engine, k=5)
    assert out["drop_reason"].to_list() == [None]
    assert out["chosen"][0].to_list()[1]["content"] == "resp1" and out["rejected"][0].to_list()[1]["content"] == "resp2"
    dpo = meta_dicts(out)[0]["dpo"]
    assert (dpo["chosen_index"], dpo["rejected_index"]) == (1, 2) and len(dpo["candidates"]) == 5
    assert engine.calls[0][1].n == 5 and engine.calls[0][1].temperature == 0.8


@pytest.mark.parametrize("k, ratings", [(1, [5]), (3, [4, 4, 4])])
def test_single_response_or_equal_rewards_give_no_pair(k, ratings):
    out = magpie_curate.preference_pairs(pairs_frame(), engine=dpo_engine(f"dpo-{k}", ratings), k=k)
    assert out["drop_reason"].to_list() == ["no_preference"] and out["chosen"].to_list() == [None]


def test_failed_judging_is_counted_not_defaulted():
    engine = dpo_engine("dpo-null", [5, 6])
    engine.top_logprobs = {"[Assistant response]\nresp0\n": {"5": 0.0}}  # digits missing for resp0
    out = magpie_curate.preference_pairs(pairs_frame(), engine=engine, k=2)
    assert out["drop_reason"].to_list() == ["reward_null"]
    assert json.loads(out["meta"][0])["dpo"]["rewards"][0] is None


def test_extend_difficult_instructions_to_two_turns(tmp_path):
    from pipeline.recipes import Step, input_job, magpie_steps

    df = frame().with_columns(pl.Series("meta", [json.dumps({"magpie": {"row_seed": i}}) for i in range(len(ROWS))]))
    path = tmp_path / "tagged.parquet"
    df.write_parquet(path)
    steps = [Step("difficult", "pipeline.select.magpie_presets:select_difficult", {"min_difficulty": "medium"},
                  uses_engine=False, shard_size=None)]
    steps += [s for s in magpie_steps(turns=2) if s.name.startswith(("followups", "responses-"))]
    spec = EngineSpec.make("fake", "extend", options={"script": {"<|im_start|>assistant\n": "A good answer."}})
    summary = input_job(tmp_path / "run", input_path=path, steps=steps, engine=spec)
    out = pl.read_parquet(summary["export"])
    assert sorted(out["id"].to_list()) == ["colon", "copy", "long_good", "low_reward", "poor", "short_good"]  # >= medium
    assert all([m["role"] for m in c] == ["user", "assistant", "user", "assistant"] for c in out["messages"].to_list())
