"""I-SHEEP (arXiv 2408.08072): the score parser and the cleanup rules as the reference reads them, the loop's
bookkeeping with a fake engine and a recording training hook, and two real iterations on SmolLM2 (vLLM on CPU,
LoRA SFT with TRL)."""
import json

import polars as pl
import pytest

from pipeline.engines import EngineSpec
from pipeline.recipes.selfalign import isheep_job, read_seed_tasks
from pipeline.synth.isheep import encode_prompt, parse_score, parse_task


@pytest.mark.parametrize("text, score", [
    ("9||The response is correct.", 9), (" 8.6 mostly fine", 9), ("8.4||ok", 8), ("10", 10), ("**7**||meh", 7),
    ("11", None), ("0||bad", None), ("Score: 9", None), ("I would give it 9", None), ("", None), (None, None),
    ("excellent||9", None), ("- 9 || fine", 9),
])
def test_scores_are_read_as_the_reference_reads_them(text, score):
    assert parse_score(text) == score


def test_the_prompt_ends_where_the_next_task_begins_and_the_cleanup_rules():
    prompt = encode_prompt(["Sort the numbers.\n\n3, 1, 2", "Name a prime number."])
    assert prompt.endswith("###\n1. Instruction: Sort the numbers.\n1. Input:\n3, 1, 2\n"
                           "###\n2. Instruction: Name a prime number.\n2. Input:\n<noinput>\n###\n3. Instruction:")
    assert parse_task(" Write a haiku about autumn leaves.\n3. Input:\n<noinput>\n", 3) == ("Write a haiku about autumn leaves.", None)
    assert parse_task(" Fix the grammar in this sentence.\n3. Input:\nHe go home.", 3) == ("Fix the grammar in this sentence.\n\nHe go home.", None)
    rejected = {" Say hi.\n3. Input:\n<noinput>": "task_length",
                " Draw a picture of a cat please.\n3. Input:\n<noinput>": "task_blacklisted_word",
                " \"Quote\" this famous line from Hamlet.\n3. Input:\n<noinput>": "task_bad_start",
                " Summarize the article at https://example.com today.\n3. Input:\n<noinput>": "task_url",
                " Explain photosynthesis to a child.\n3. Input:\nNo input needed here": "task_format_leak",
                " Explain photosynthesis to a child in simple words.": "no_task_input"}
    for completion, reason in rejected.items():
        assert parse_task(completion, 3) == (None, reason), completion


def fake_engine(**options) -> EngineSpec:
    script = {"for its quality": "9||fine", "how well it follows": "10||ok", **options.pop("script", {})}
    tasks = {seed.split("\n")[0]: f" Describe a variation of: {seed.split(chr(10))[0].lower()}\n4. Input:\n<noinput>\n"
             for seed in read_seed_tasks(None)}
    return EngineSpec.make("fake", "base-model", options={"script": {**script, **tasks}, **options})


def test_two_iterations_train_the_base_model_on_the_latest_data_only(tmp_path):
    calls = []

    def train(base, data, out):
        calls.append((base, pl.read_parquet(data).height, out.name, out.parent.name))
        return f"trained-{out.parent.name}"  # idempotent, as a hook must be for resume (lora_sft reuses OUT/merged)

    report = isheep_job(tmp_path / "run", n=12, seed=3, engine=fake_engine(), iterations=2, train=train)["isheep"]
    assert [c[0] for c in calls] == ["base-model", "base-model"]  # always from the base model, never continued
    assert [it["model"] for it in report["iterations"]] == ["base-model", "trained-iter-1"]  # iteration 2 generates with M_1
    assert [c[3] for c in calls] == ["iter-1", "iter-2"] and all(c[2] == "model" for c in calls)
    for it, call in zip(report["iterations"], calls):
        assert it["kept"] == call[1] > 0 and it["kept_mean"] == {"self_quality": 9.0, "self_following": 10.0}
    tasks = pl.read_parquet(tmp_path / "run" / "iter-2" / "export" / "data.parquet")
    assert all(m[0]["content"].startswith("Describe a variation of:") and m[1]["role"] == "assistant" for m in tasks["messages"])
    assert json.loads((tmp_path / "run" / "isheep.json").read_text()) == report
    # resume: a second call recomputes nothing and trains nothing new (the hook sees the same exports)
    again = isheep_job(tmp_path / "run", n=12, seed=3, engine=fake_engine(), iterations=2, train=train)["isheep"]
    assert [it["kept"] for it in again["iterations"]] == [it["kept"] for it in report["iterations"]]


def test_unparseable_and_low_self_scores_are_counted_not_kept(tmp_path):
    engine = fake_engine(script={"for its quality": "I think it is good", "how well it follows": "10||ok"})
    summary = isheep_job(tmp_path / "bad", n=6, seed=0, engine=engine, iterations=1, train=lambda b, d, o: "m")
    assessed = summary["stages"]["1:assessed"]
    assert assessed["rows_out"] == 0 and assessed["drops"] == {"unparseable_self_score": assessed["rows_in"]}
    low = fake_engine(script={"for its quality": "8||good", "how well it follows": "10||ok"})
    summary = isheep_job(tmp_path / "low", n=6, seed=0, engine=low, iterations=1, train=lambda b, d, o: "m")
    selected = summary["stages"]["1:selected"]
    assert selected["rows_out"] == 0 and selected["drops"] == {"self_assessed_at_least": selected["rows_in"]} and selected["rows_in"] > 0


def test_llamacpp_cannot_run_later_iterations(tmp_path):
    with pytest.raises(ValueError, match="--engine vllm"):
        isheep_job(tmp_path, n=2, seed=0, engine=EngineSpec.make("llamacpp"), iterations=2)


@pytest.mark.slow
@pytest.mark.real_llm
@pytest.mark.vllm
def test_two_iterations_on_smollm2_with_lora_training(tmp_path):
    """Two real iterations (~1 min): SmolLM2 on vLLM writes, answers and rates its own tasks, TRL trains a LoRA on
    the kept pairs, and iteration 2 generates with the merged weights. The threshold is low so that a 135M model
    keeps a few pairs; the filter itself is tested above."""
    import torch
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    out = tmp_path / "isheep"
    args = ["isheep", "--out", str(out), "--n", "16", "--iterations", "2", "--max-tokens", "128", "--train-steps", "2",
            "--min-score", "3", "--engine", "vllm"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "isheep.json").read_text())
    first, second = report["iterations"]
    merged = out / "iter-1" / "model" / "merged"
    assert second["model"] == first["trained"] == str(merged)
    engines = {json.loads(line)["engine"]["model"] for line in (out / "iter-2" / "manifest.jsonl").read_text().splitlines()
               if (json.loads(line).get("engine") or {}).get("model")}
    assert engines == {str(merged)}  # iteration 2 generated with the trained model
    for it in (first, second):
        assert 0 < it["kept"] <= it["assessed"] and all(3 <= v <= 10 for v in it["kept_mean"].values())
    training = json.loads((merged / "training.json").read_text())
    assert training["steps"] == 2 and training["rows"] == first["kept"]
    from pipeline.engines.models import smollm2_hf_dir

    base, tuned = load_file(smollm2_hf_dir() / "model.safetensors"), load_file(merged / "model.safetensors")
    name = next(k for k in tuned if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.equal(base[name].float(), tuned[name].float())  # the LoRA moved the weights
    card = (out / "iter-2" / "export" / "README.md").read_text()
    assert "[isheep](https://arxiv.org/abs/2408.08072)" in card and "kept when both are at least 3" in card
    again = CliRunner().invoke(app, args)  # resume: nothing is generated or trained again
    assert again.exit_code == 0 and json.loads((out / "isheep.json").read_text())["iterations"] == report["iterations"]
