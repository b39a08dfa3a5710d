"""The Magpie flow: one Prefect task per step, each reading a stage directory and writing the next.

Tasks take only paths, numbers, dicts and EngineSpec JSON. Resume is by finished shard files in the run
directory (a re-run skips them), so Prefect's own result cache is off here; cross-run caching keyed on the
input fingerprint and stage version is issue #5's work.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline import jobs
from pipeline.engines import EngineSpec


@task(cache_policy=NO_CACHE, task_run_name="plan")
def plan_task(out: str, n: int, seed: int) -> str:
    return str(jobs.write_plan(Path(out), n=n, seed=seed))


@task(cache_policy=NO_CACHE, task_run_name="{step[name]}")
def step_task(out: str, step: dict, source: str, engine: str | None, max_failure_rate: float) -> str:
    spec = EngineSpec.from_json(engine) if engine else None
    step = {**step, "computes": tuple(step.get("computes", ()))}
    return str(jobs.run_step(Path(out), jobs.Step(**step), Path(source), engine=spec, max_failure_rate=max_failure_rate))


@task(cache_policy=NO_CACHE, task_run_name="export")
def export_task(out: str, source: str) -> str:
    return str(jobs.export_parquet(Path(out), Path(source)))


@flow(name="magpie")
def magpie_flow(out: str, n: int = 24, seed: int = 0, engine: dict | None = None, turns: int = 1,
                task_name: str | None = None, response_max_tokens: int = 384, shard_size: int = 8,
                max_failure_rate: float = 0.1) -> dict:
    """Magpie end to end into `out`; `engine` is EngineSpec.make's keyword arguments (default: SmolLM2 on vLLM)."""
    spec = EngineSpec.make(**(engine or {"backend": "vllm"})).to_json()
    source = plan_task(out, n, seed)
    for step in jobs.magpie_steps(turns=turns, task=task_name, response_max_tokens=response_max_tokens, shard_size=shard_size):
        source = step_task(out, asdict(step), source, spec if step.uses_engine else None, max_failure_rate)
    export_task(out, source)
    return jobs.summarize(Path(out))
