"""The built-in training step of self-training loops (I-SHEEP): LoRA SFT with TRL + PEFT, merged into the weights.

The adapter is merged (as the reference does with LLaMA-Factory's export) so that the next iteration's engine loads
an ordinary checkpoint with any backend that reads HF directories (vLLM, the OpenAI-compatible server in front of
it); the adapter is saved beside it. Chosen libraries: TRL's SFTTrainer (the trainer our exports target) and PEFT's
LoRA, rather than a training loop of our own.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pipeline.core.inputs import content_hash

TrainHook = Callable[[str, Path, Path], str]
"""(base model path, SFT Parquet with a `messages` column, output directory) -> the trained model's path."""


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    learning_rate: float = 1e-4
    epochs: float = 2.0  # the reference trains 2 epochs per iteration
    max_steps: int = -1  # > 0 caps the steps (a smoke run on a CPU)
    batch_size: int = 4
    max_length: int = 2048
    seed: int = 0


def lora_sft(base: str, data: Path, out: Path, settings: LoraSettings = LoraSettings()) -> str:
    """Train a LoRA adapter on `base` with the conversations in `data`, merge it, and save the merged model to
    OUT/merged (the adapter to OUT/adapter, what made it to OUT/merged/training.json); returns OUT/merged. An
    existing OUT/merged made from the same base, data and settings is returned as it is (resume); one made from
    others is refused. Raises ValueError when `data` has no rows: there is nothing to train on."""
    out = Path(out)
    merged = out / "merged"
    identity = {"base": base, "data": content_hash(Path(data)), **asdict(settings)}
    if (merged / "config.json").exists():
        done = json.loads((merged / "training.json").read_text())
        changed = sorted(k for k in identity if done.get(k) != identity[k])
        if changed:
            raise ValueError(f"{merged} was trained with different {changed}; delete {out} to train again")
        return str(merged)
    import polars as pl
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = pl.read_parquet(data, columns=["messages"]).to_dicts()
    if not rows:
        raise ValueError(f"{data}: no rows to train on (every row was filtered out); lower the threshold or make more")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = SFTConfig(output_dir=str(out / "trainer"), num_train_epochs=settings.epochs, max_steps=settings.max_steps,
                       per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                       max_length=settings.max_length, seed=settings.seed, report_to=[], save_strategy="no",
                       logging_steps=1, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available())
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear")
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         args=config, peft_config=lora)
    result = trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    staging = out / "merged.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.merge_and_unload().save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "training.json").write_text(json.dumps({**identity, "rows": len(rows), "steps": result.global_step,
                                                       "loss": result.training_loss}, indent=1))
    staging.rename(merged)  # the merged model appears whole or not at all
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return str(merged)
