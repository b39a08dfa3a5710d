"""MCTS and CodecLM on the real SmolLM2 (optimizer, responder and judge), a handful of seeds."""
import json

import polars as pl
import pytest

from pipeline.synth import mcts
from pipeline.engines import EngineSpec
from pipeline.recipes import codeclm_steps, input_job, mcts_job
from pipeline.core.rundir import read_shards

pytestmark = pytest.mark.real_llm
SEEDS = [{"instruction": "How do I make my tomato plants grow bigger?"},
         {"instruction": "What is 15% of 80?", "category": "Math"},
         {"instruction": "Write a function that reverses a string.", "category": "Coding & Debugging"}]


def write_seeds(path):
    path.write_text("\n".join(json.dumps(s) for s in SEEDS))
    return path


def test_mcts_job_on_smollm2(tmp_path):
    summary = mcts_job(tmp_path / "run", input_path=write_seeds(tmp_path / "seeds.jsonl"), engine=EngineSpec.make("llamacpp"),
                       iterations=3, responses=2, response_max_tokens=64, exploration=0.1)
    trees = [mcts.Tree.from_dict(json.loads(m)["mcts"]["tree"]) for m in read_shards(tmp_path / "run" / "trees")["meta"]]
    assert [len(t.actions) for t in trees] == [3, 5, 5]  # Helpfulness 3; + Math 2; + Coding 2
    for tree in trees:
        nodes = list(tree.root.walk())
        assert tree.iteration + tree.failures >= 3 and len(nodes) == 1 + tree.iteration
        assert all(n.local_avg_reward is not None and 0.0 <= n.local_avg_reward <= 1.0 for n in nodes)
    sft, dpo = pl.read_parquet(summary["export"]["sft"]), pl.read_parquet(summary["export"]["dpo"])
    assert sft.height == 3 and sft["messages"][0].to_list()[1]["content"].startswith("The Optimized Prompt:")
    for meta in dpo["meta"]:
        values = json.loads(meta)["mcts"]
        assert values["chosen_value"] > values["rejected_value"]
    # resumable: a second run loads the finished trees and makes no engine call
    again = mcts_job(tmp_path / "run", input_path=tmp_path / "seeds.jsonl", engine=EngineSpec.make("llamacpp"),
                     iterations=3, responses=2, response_max_tokens=64, exploration=0.1)
    assert again["stages"]["trees"] == summary["stages"]["trees"]


def test_codeclm_on_smollm2(tmp_path):
    # SmolLM2 cannot write the paper's "s1 s2" judgment line; its digit logprobs can judge
    steps = codeclm_steps(n_metadata=4, per_metadata=1, max_iterations=2, keep_unresolved=True, judge_mode="logprobs", theta=0.5,
                          response_max_tokens=64)
    summary = input_job(tmp_path / "run", input_path=write_seeds(tmp_path / "seeds.jsonl"), steps=steps,
                        engine=EngineSpec.make("llamacpp"))
    encoded = read_shards(tmp_path / "run" / "encoded")
    assert encoded.height >= 2  # SmolLM2 follows the few-shot format for most seeds
    out = pl.read_parquet(summary["export"])
    assert out.height == summary["stages"]["decoded"]["rows_out"] > 0  # judged (kept, or kept unresolved), none failed
    for row in out.iter_rows(named=True):
        record = json.loads(row["meta"])["codeclm"]
        assert 1 <= record["iteration"] <= 2 and record["metadata"]["use_case"]
        assert all(j["gap"] is not None for j in record["judgments"])
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert summary["stages"]["filtered"]["rows_in"] == summary["stages"]["decoded"]["rows_out"]
