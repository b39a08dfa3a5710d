"""Self-alignment jobs: Alignment-for-Honesty "I don't know" data from a model's own correctness."""
from __future__ import annotations

from pathlib import Path

from pipeline.engines import EngineSpec
from pipeline.recipes.steps import Progress, Step, input_job


def honesty_steps(*, method: str = "absolute", m: int = 10, answers_column: str | None = None,
                  matcher: str = "contains", max_tokens: int = 64, shard_size: int = 32) -> list[Step]:
    """Greedy + m sampled answers, labeled against the gold answers → the method's SFT rows."""
    from pipeline.synth.honesty import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown honesty method {method!r}; valid: {list(METHODS)}")
    return [Step("answered", "pipeline.synth.honesty:answer", {"m": m, "answers_column": answers_column,
                                                               "matcher": matcher, "max_tokens": max_tokens},
                 shard_size=shard_size),
            Step(f"honesty-{method}", "pipeline.synth.honesty:build_stage", {"method": method}, uses_engine=False,
                 shard_size=None)]


def honesty_job(out: Path, *, input_path: Path, engine: EngineSpec, strict: bool = False, salvage: bool = False,
                max_failure_rate: float = 0.1, on_progress: Progress | None = None, **step_options) -> dict:
    """Honesty SFT data from the questions at `input_path` into `out`."""
    return input_job(out, input_path=input_path, steps=honesty_steps(**step_options), engine=engine, strict=strict,
                     salvage=salvage, max_failure_rate=max_failure_rate, on_progress=on_progress)
