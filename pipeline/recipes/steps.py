"""Step, the unit every job is made of, and running steps over a run directory.

The CLI runs steps in-process (`run_steps`); the Prefect flows in flows/ run each step as a task. A Step names
its stage function by import path and its extra models by role, so it is plain data that Prefect can hash and
pass between processes.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.core.inputs import write_input
from pipeline.core.rundir import (append_manifest, file_record, read_manifest, read_shards, shard_fingerprint, summarize,
                                  write_shard)
from pipeline.recipes.runner import run_stage
from pipeline.engines import EngineSpec, release_engines
from pipeline.score import embed, reward

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Step:
    """One stage application: `name` is its directory in the run; `stage` is "module:function"."""

    name: str
    stage: str
    params: dict = field(default_factory=dict)
    uses_engine: bool = True
    shard_size: int | None = 32  # None: the whole input as one shard (filters that compare rows)
    computes: tuple[str, ...] = ()  # columns the stage fills; their nulls are counted in the manifest
    engine: str | None = None  # EngineSpec JSON of a model for this step only (else the job's engine)
    engines: dict = field(default_factory=dict)  # more models by role, {role: EngineSpec JSON}, passed as role=Engine

    def function(self) -> Callable:
        module, _, name = self.stage.partition(":")
        return getattr(importlib.import_module(module), name)


def run_step(out: Path, step: Step, source: Path, *, engine: EngineSpec | None, max_failure_rate: float = 0.1,
             on_shard: Callable[[int, int], None] | None = None) -> Path:
    """Run one step on the stage directory `source`; returns the step's stage directory."""
    if step.engine:
        engine = EngineSpec.from_json(step.engine)
    engine = engine if step.uses_engine else None
    roles = {role: EngineSpec.from_json(spec) for role, spec in step.engines.items()}
    # Free the GPU for the models this step uses: the previous step's vLLM engines and torch models.
    embed.release_models()
    reward.release_models()
    if engine is not None and engine.backend == "vllm":
        release_engines({engine.to_json(), *(spec.to_json() for spec in roles.values())})
    return run_stage(out, step.name, step.function(), source=source, params=step.params,
                     engine=engine, engines=roles, shard_size=step.shard_size, max_failure_rate=max_failure_rate,
                     computes=tuple(step.computes), on_shard=on_shard)


def run_steps(out: Path, steps: list[Step], source: Path, *, engine: EngineSpec | None, max_failure_rate: float = 0.1,
              on_progress: Progress | None = None) -> Path:
    """Run `steps` in order, each on the previous one's output; returns the last stage directory."""
    for step in steps:
        on_shard = (lambda done, total, name=step.name: on_progress(name, done, total)) if on_progress else None
        source = run_step(out, step, source, engine=engine, max_failure_rate=max_failure_rate, on_shard=on_shard)
    return source


def export_parquet(run_dir: Path, stage_dir: Path, name: str = "data", card: str | None = None) -> Path:
    """Write the kept rows of `stage_dir` to DIR/export/<name>.parquet (atomically) and log it; with `card`
    (a title), also the dataset card DIR/export/README.md. An export of the same rows again (a cached re-run, a
    Prefect retry) rewrites nothing and logs nothing, so the run's files, and a Hub push of them, stay as they were."""
    from pipeline.ship import card as cards

    run_dir, path = Path(run_dir), Path(run_dir) / "export" / f"{name}.parquet"
    source = shard_fingerprint(Path(stage_dir))
    last = next((e for e in reversed(read_manifest(run_dir)) if e.get("stage") == "export" and e.get("path") == str(path)), None)
    unchanged = bool(last and last.get("source") == source and path.exists() and last.get("sha256") == file_record(path)["sha256"])
    if not unchanged:
        df = read_shards(stage_dir)
        write_shard(df, path)
        append_manifest(run_dir, {"stage": "export", "rows_in": df.height, "rows_out": df.height, "path": str(path),
                                  "source": source, "sha256": file_record(path)["sha256"]})
    if card:
        cards.write(run_dir, run_dir / "export" / "README.md", pretty_name=card,
                    description=f"Made by aligndata from the run directory `{run_dir.name}`.")
    return path


def run_job(out: Path, steps: list[Step], source: Callable[[Path], Path], *, engine: EngineSpec | None, card: str,
            max_failure_rate: float, on_progress: Progress | None) -> dict:
    """Write the source stage, run `steps` on it, export Parquet and the card; returns summarize()."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last = run_steps(out, steps, source(out), engine=engine, max_failure_rate=max_failure_rate, on_progress=on_progress)
    path = export_parquet(out, last, card=card)
    return summarize(out) | {"export": str(path), "seconds": round(time.perf_counter() - started, 1)}


def input_job(out: Path, *, input_path: Path, steps: list[Step], engine: EngineSpec | None, fmt: str | None = None,
              strict: bool = False, salvage: bool = False, max_failure_rate: float = 0.1,
              on_progress: Progress | None = None) -> dict:
    """Run `steps` over the input at `input_path` into `out` and export; returns summarize()."""
    return run_job(out, steps, lambda d: write_input(d, input_path, fmt, strict=strict, salvage=salvage), engine=engine,
                   card="Curated alignment data",
                   max_failure_rate=max_failure_rate, on_progress=on_progress)
