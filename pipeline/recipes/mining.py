"""Jobs over data users already have: WildFeedback's preference pairs from chat logs, BLEUBERI's hard-prompt
selection (and its GRPO reward), Mixture-of-Instructions packing."""
from __future__ import annotations

from pathlib import Path

from pipeline.engines import EngineSpec
from pipeline.recipes.privacy import pii_steps
from pipeline.recipes.steps import Progress, Step, input_job


def bleuberi_steps(*, k: int, mode: str = "hard", references_column: str | None = None, temperature: float = 0.0,
                   max_tokens: int = 512, seed: int = 0, shard_size: int = 32) -> list[Step]:
    """The policy (the job's engine) answers each prompt and is scored by BLEU against the references → the mode's k."""
    return [Step("bleu", "pipeline.score.bleu:score", {"references_column": references_column, "temperature": temperature,
                                                      "max_tokens": max_tokens}, shard_size=shard_size, computes=("bleu",)),
            Step("selected", "pipeline.select.bleuberi:select", {"k": k, "mode": mode, "seed": seed},
                 uses_engine=False, shard_size=None)]


def bleuberi_job(out: Path, *, input_path: Path, engine: EngineSpec, strict: bool = False, salvage: bool = False,
                 max_failure_rate: float = 0.1, on_progress: Progress | None = None, **step_options) -> dict:
    """BLEUBERI selection of the prompts at `input_path` into `out`; exported in selection order."""
    return input_job(out, input_path=input_path, steps=bleuberi_steps(**step_options), engine=engine, strict=strict,
                     salvage=salvage, max_failure_rate=max_failure_rate, on_progress=on_progress)


def feedback_steps(*, max_tokens: int = 1024, shard_size: int = 32, pii: bool = True,
                   pii_drop: tuple[str, ...] = ()) -> list[Step]:
    """The PII pass (redact; rows with a `pii_drop` type dropped; none with `pii=False`) → SAT/DSAT verdicts → the
    dissatisfied users' preferences → preferred responses and pairs."""
    return pii_steps(pii, pii_drop) + [Step("feedback-classified", "pipeline.synth.feedback:classify", {}, shard_size=shard_size),
            Step("feedback-preferences", "pipeline.synth.feedback:extract_preferences", {}, shard_size=shard_size),
            Step("feedback-pairs", "pipeline.synth.feedback:preferred_pairs", {"max_tokens": max_tokens}, shard_size=shard_size)]


def feedback_job(out: Path, *, input_path: Path, engine: EngineSpec, strict: bool = False, salvage: bool = False,
                 max_failure_rate: float = 0.1, on_progress: Progress | None = None, **step_options) -> dict:
    """WildFeedback preference pairs from the chat logs at `input_path` into `out`."""
    return input_job(out, input_path=input_path, steps=feedback_steps(**step_options), engine=engine, strict=strict,
                     salvage=salvage, max_failure_rate=max_failure_rate, on_progress=on_progress)


def moi_step(*, system_prompts: dict[str, str], max_tokens: int = 2048, quotas: dict[str, int] | None = None,
             tokenizer: str | None = None) -> Step:
    """Mixture-of-Instructions packing over the whole input (pipeline.select.moi.pack)."""
    return Step("packed", "pipeline.select.moi:pack", {"system_prompts": system_prompts, "max_tokens": max_tokens,
                                                       "quotas": quotas, "tokenizer": tokenizer},
                uses_engine=False, shard_size=None)


def moi_job(out: Path, *, input_path: Path, system_prompts: dict[str, str], max_tokens: int = 2048,
            quotas: dict[str, int] | None = None, tokenizer: str | None = None, strict: bool = False,
            salvage: bool = False, on_progress: Progress | None = None) -> dict:
    """Mixture-of-Instructions packing of the rows at `input_path` into `out` (pipeline.select.moi.pack)."""
    step = moi_step(system_prompts=system_prompts, max_tokens=max_tokens, quotas=quotas, tokenizer=tokenizer)
    return input_job(out, input_path=input_path, steps=[step], engine=None, strict=strict, salvage=salvage,
                     on_progress=on_progress)
