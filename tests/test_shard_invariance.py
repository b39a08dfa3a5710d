"""The same seed gives the same rows whatever the shard size, on a batch-invariant engine (llama.cpp runs one request
at a time): every request is seeded by its row, never by the row's place in a shard. Real SmolLM2."""
import polars as pl
import pytest

from pipeline.core.rundir import read_shards
from pipeline.engines import EngineSpec
from pipeline.recipes import Step, codeclm_steps, magpie_steps, mcts_search_step, run_steps, tag_steps
from pipeline.synth import magpie

pytestmark = [pytest.mark.real_llm, pytest.mark.slow]
LLAMACPP = EngineSpec.make("llamacpp")
SEEDS = ["Write a haiku about autumn leaves.", "How do I boil an egg?", "Name three uses of a paperclip."]


def seed_rows(texts) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"s{i}" for i in range(len(texts))], "source": ["test"] * len(texts),
                         "messages": [[{"role": "user", "content": t}] for t in texts], "meta": ["{}"] * len(texts)})


def rows_for(tmp_path, steps_for, source, sizes=(1, 3), columns=("id", "messages")) -> list[list[dict]]:
    """The last stage's rows (and its dropped rows) for each shard size."""
    outputs = []
    for size in sizes:
        out = tmp_path / f"shards-{size}"
        last = run_steps(out, steps_for(size), source, engine=LLAMACPP)
        kept = read_shards(last).select(columns).to_dicts()
        dropped = read_shards(last, "dropped-*.parquet").select(["id", "drop_reason"]).to_dicts()
        outputs.append((kept, dropped))
    return outputs


def test_magpie_rows_do_not_depend_on_the_shard_size(tmp_path):
    def steps(size):
        return magpie_steps(response_max_tokens=48, response_temperature=0.6, response_top_p=0.9, shard_size=size)[:3]

    small, large = rows_for(tmp_path, steps, magpie.plan(4, seed=3), sizes=(1, 4))
    assert small == large and len(small[0]) >= 2


def test_tags_do_not_depend_on_the_shard_size(tmp_path):
    source = seed_rows(SEEDS).with_columns(pl.col("messages").list.concat(
        pl.lit([{"role": "assistant", "content": "Sure, here it is."}])))

    def steps(size):
        return tag_steps(tags=("quality", "difficulty"), language=False, reward=False, neighbors=False, shard_size=size)

    small, large = rows_for(tmp_path, steps, source, columns=("id", "input_quality", "difficulty"))
    assert small == large


def test_mcts_trees_do_not_depend_on_the_shard_size(tmp_path):
    def steps(size) -> list[Step]:
        return [mcts_search_step(iterations=2, responses=1, response_max_tokens=24, shard_size=size)]

    small, large = rows_for(tmp_path, steps, seed_rows(SEEDS[:2]), sizes=(1, 2), columns=("id", "meta"))
    assert small == large and len(small[0]) == 2


def test_codeclm_rows_do_not_depend_on_the_shard_size(tmp_path):
    def steps(size):
        return codeclm_steps(n_metadata=2, judge_mode="logprobs", max_iterations=1, keep_unresolved=True,
                             response_max_tokens=24, shard_size=size)

    small, large = rows_for(tmp_path, steps, seed_rows(SEEDS[:2]), sizes=(1, 2))
    assert small == large and len(small[0]) >= 1
