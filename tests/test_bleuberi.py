"""BLEUBERI (arXiv 2505.11080): BLEU golden values, the four selection modes, the stage on a scripted policy, the
command on the real SmolLM2, and the reward function driving one TRL GRPO step on CPU."""
import json

import numpy as np
import polars as pl
import pytest

from pipeline.engines import EngineSpec, load_engine
from pipeline.score.bleu import bleu, reward_function, score
from pipeline.select import bleuberi


def test_bleu_golden_values():
    assert bleu("the cat sat on the mat", ["the cat sat on the mat"]) == 1.0
    assert bleu("", ["the cat sat"]) == 0.0 and bleu("   ", ["x"]) == 0.0 and bleu("the cat", []) == 0.0
    single = bleu("the cat sat on a mat", ["a dog lay on the rug"])
    assert bleu("the cat sat on a mat", ["a dog lay on the rug", "the cat sat on the mat"]) >= single


def test_the_modes_pick_the_hardest_easiest_middle_or_random_k():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.1])
    assert bleuberi.order(scores, k=3, mode="hard").tolist() == [1, 5, 3]  # ties keep row order
    assert bleuberi.order(scores, k=2, mode="easy").tolist() == [2, 4]
    assert bleuberi.order(scores, k=2, mode="medium").tolist() == [3, 0]
    picked = bleuberi.order(scores, k=3, mode="random", seed=1)
    assert len(set(picked.tolist())) == 3 and picked.tolist() == bleuberi.order(scores, k=3, mode="random", seed=1).tolist()
    with pytest.raises(ValueError, match="valid: \\['hard', 'easy', 'medium', 'random'\\]"):
        bleuberi.order(scores, k=1, mode="hardest")


def frame(rows):
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(rows))], "source": ["t"] * len(rows),
                         "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": gold}] for q, gold, _ in rows],
                         "meta": [json.dumps({"fields": {"references": refs}} if refs is not None else {}) for _, _, refs in rows]})


def test_the_stage_scores_the_policy_against_the_references_and_never_selects_a_row_without_them():
    policy = load_engine(EngineSpec.make("fake", "policy", options={"script": {"capital": "Paris is the capital of France.",
                                                                              "poem": "Roses are red."}}))
    rows = frame([("What is the capital of France?", "gold", ["Paris is the capital of France."]),
                  ("Write a poem.", "gold", "Violets are blue, sugar is sweet."),
                  ("Write a poem about rain.", "gold", None)])  # no references column for this row
    out = score(rows, engine=policy, references_column="references")
    assert out["bleu"][0] == 1.0 and 0.0 <= out["bleu"][1] < 0.5 and out["bleu"][2] is None
    selected = bleuberi.select(out, k=2, mode="hard")
    assert selected["id"].to_list() == ["r1", "r0", "r2"]
    assert selected["drop_reason"].to_list() == [None, None, "null_score"]
    gold = score(rows, engine=policy)  # no column: the gold answer is the reference
    assert gold["bleu"].null_count() == 0


@pytest.mark.real_llm
def test_the_bleuberi_command_on_smollm2(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "What is the capital of France?", "output": "Paris.",
         "references": ["The capital of France is Paris.", "Paris is the capital of France."]},
        {"instruction": "Name the largest planet in the solar system.", "output": "Jupiter.",
         "references": ["Jupiter is the largest planet in the solar system."]},
        {"instruction": "Translate 'thank you' into Klingon and explain its grammar.", "output": "qatlho'",
         "references": ["qatlho' is how Klingons say thank you; it is a verb."]}]))
    result = CliRunner().invoke(app, ["bleuberi", "--input", str(data), "--out", str(tmp_path / "run"), "--k", "2",
                                      "--references-column", "references", "--max-tokens", "48", "--engine", "llamacpp"])
    assert result.exit_code == 0, result.output
    scored = pl.read_parquet(tmp_path / "run" / "bleu" / "shard-*.parquet").sort("bleu", maintain_order=True)
    selected = pl.read_parquet(tmp_path / "run" / "export" / "data.parquet")
    assert selected["id"].to_list() == scored["id"].head(2).to_list()  # the two the policy answers worst
    assert all(json.loads(m)["bleuberi"]["references"] >= 1 for m in scored["meta"])
    assert "https://arxiv.org/abs/2505.11080" in (tmp_path / "run" / "export" / "README.md").read_text()


@pytest.mark.slow
def test_the_reward_function_drives_a_trl_grpo_step(tmp_path, tiny_model):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    reward = reward_function("references")
    assert reward(["the cat sat"], references=[["the cat sat"]]) == [1.0]  # the shape GRPOTrainer calls it with
    data = Dataset.from_list([{"prompt": "Say hello.", "references": ["Hello!"]},
                              {"prompt": "Name a colour.", "references": ["Blue.", "Red."]}])
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=8, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tokenizer)
    assert trainer.train().global_step == 1
    logged = trainer.state.log_history[0]
    assert "rewards/bleu/mean" in logged and 0.0 <= logged["rewards/bleu/mean"] <= 1.0
