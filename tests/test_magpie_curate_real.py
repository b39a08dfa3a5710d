"""Magpie curation on the real SmolLM2: tags (structured and prefilled), language, judge reward, min-neighbour
distance, a preset, and preference pairs, over a small Magpie set made in the test."""
import polars as pl
import pytest

from pipeline.select import magpie_presets as magpie_curate
from pipeline.score import tags
from pipeline.engines import EngineSpec, load_engine
from pipeline.recipes import input_job, magpie_job, tag_steps

pytestmark = pytest.mark.real_llm


@pytest.fixture(scope="module")
def magpie_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("magpie")
    summary = magpie_job(out, n=6, seed=11, engine=EngineSpec.make("llamacpp"), response_max_tokens=96,
                         response_temperature=0.6, response_top_p=0.9, shard_size=6, filter_spec=["instruction_complete"])
    return summary["export"]


@pytest.mark.parametrize("structured", [True, False])
def test_tags_on_smollm2(llamacpp, structured, magpie_set):
    df = pl.read_parquet(magpie_set)
    out = tags.tag(df, engine=llamacpp, structured=structured)
    if structured:  # the grammar makes every reply valid JSON with in-set values
        assert out["input_quality"].null_count() == out["difficulty"].null_count() == out["task_category"].null_count() == 0
    for column, levels in [("input_quality", tags.QUALITY_LEVELS), ("difficulty", tags.DIFFICULTY_LEVELS),
                           ("task_category", tags.CATEGORIES)]:
        assert set(out[column].drop_nulls().to_list()) <= set(levels)


@pytest.mark.vllm
def test_structured_tags_on_vllm(vllm_engine, magpie_set):
    out = tags.tag(pl.read_parquet(magpie_set).head(3), engine=vllm_engine, tags=("difficulty",))
    assert out["difficulty"].null_count() == 0 and set(out["difficulty"].to_list()) <= set(tags.DIFFICULTY_LEVELS)


def test_tag_filter_and_pair_end_to_end(magpie_set, tmp_path):
    spec = EngineSpec.make("llamacpp")
    tagged = input_job(tmp_path / "tagged", input_path=magpie_set, steps=tag_steps(), engine=spec)
    df = pl.read_parquet(tagged["export"])
    assert df["language"].drop_nulls().len() > 0 and df["instruct_reward"].null_count() == 0
    assert df["instruct_reward"].is_between(0.0, 1.0).all() and df["min_neighbor_distance"].null_count() == 0
    # the judge's rewards are in [0, 1], so the paper's tau_1 = -12 is replaced
    kept = magpie_curate.magpie_filter(df, preset="pro", k=4, reward_threshold=0.0)
    assert kept.filter(pl.col("drop_reason").is_null()).height <= 4
    pairs = magpie_curate.preference_pairs(df.head(2), engine=load_engine(spec),
                                           k=3, max_tokens=48)
    made = pairs.filter(pl.col("drop_reason").is_null())
    for chosen, rejected in zip(made["chosen"].to_list(), made["rejected"].to_list()):
        assert chosen[0] == rejected[0] and chosen[1]["role"] == "assistant" and chosen[1]["content"] != rejected[1]["content"]
    assert set(pairs["drop_reason"].drop_nulls().to_list()) <= {"no_preference"}
