"""The audit job: overlap of a dataset with a reference set (arXiv 2510.18554), or the paper's extraction
experiment: Magpie-style generations from a model's pre-query prefix, audited against its suspected training data."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.rundir import read_records, write_atomic
from pipeline.engines import EngineSpec
from pipeline.recipes.magpie import magpie_steps, write_plan
from pipeline.recipes.steps import Progress, Step, input_job, run_job


def audit_step(against: Path, *, field: str = "instruction", ngram: int = 8) -> Step:
    return Step("audited", "pipeline.select.audit:audit", {"against": str(Path(against).resolve()), "field": field,
                                                            "ngram": ngram}, uses_engine=False, shard_size=4096)


def audit_job(out: Path, *, against: Path, input_path: Path | None = None, engine: EngineSpec | None = None,
              n: int = 0, seed: int = 0, threshold: float = 0.95, field: str = "instruction", shard_size: int = 32,
              strict: bool = False,
              salvage: bool = False, max_failure_rate: float = 0.1, on_progress: Progress | None = None) -> dict:
    """Audit `input_path` against `against`, or (with `engine` and `n`) `n` generations of the engine's model from
    its pre-query prefix; writes DIR/audit.json (counts at `threshold` by meaning and by string, histograms) and
    returns summarize() with it under "audit"."""
    from pipeline.select import audit

    if (input_path is None) == (engine is None or n <= 0):
        raise ValueError("audit either --input (a dataset) or --model with --n (generations to sample), not both")
    steps = [audit_step(against, field=field)]
    if input_path is not None:
        result = input_job(out, input_path=input_path, steps=steps, engine=None, strict=strict, salvage=salvage,
                           on_progress=on_progress)
    else:  # the extraction experiment: the model's own instructions, unfiltered
        generate = magpie_steps(model=engine.model, profile="auto", shard_size=shard_size)[:1]
        result = run_job(out, generate + steps, lambda d: write_plan(d, n=n, seed=seed), engine=engine,
                         card="Magpie extraction audit", max_failure_rate=max_failure_rate, on_progress=on_progress)
    counts = audit.summary(read_records(Path(result["export"])), threshold)
    write_atomic(Path(out) / "audit.json", lambda tmp: Path(tmp).write_text(json.dumps(counts, indent=1)))
    return result | {"audit": counts}
