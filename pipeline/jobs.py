"""Jobs: stages chained over one run directory. The CLI and the Prefect flows both call these."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import filters
from pipeline import magpie
from pipeline.engines import EngineSpec
from pipeline.io import append_manifest, read_shards, write_shard
from pipeline.runner import run_stage

FILTER_VERSION = "1"


def export_parquet(run_dir: Path, stage_dir: Path) -> Path:
    """Write the kept rows of `stage_dir` to DIR/export/data.parquet (atomically) and log it."""
    df = read_shards(stage_dir)
    path = write_shard(df, Path(run_dir) / "export" / "data.parquet")
    append_manifest(run_dir, {"stage": "export", "rows_in": df.height, "rows_out": df.height, "path": str(path)})
    return path


def magpie_job(out: Path, *, n: int, seed: int, engine: EngineSpec, turns: int = 1, task: str | None = None,
               system: str | None = None, instruction_temperature: float | None = None,
               instruction_max_tokens: int = 256, response_max_tokens: int = 512, response_temperature: float = 0.0,
               filter_spec: list | None = None, shard_size: int = 32, max_failure_rate: float = 0.1,
               on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Magpie end to end: instructions → responses (→ follow-ups and responses per extra turn) → filters → Parquet.

    Returns a summary: rows per stage, drops by reason, the export path and wall seconds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    common = dict(engine=engine, shard_size=shard_size, max_failure_rate=max_failure_rate)

    def progress(name):
        return (lambda done, total: on_progress(name, done, total)) if on_progress else None

    stage_dir = run_stage(out, "instructions", magpie.synthesize, source=magpie.plan(n, seed=seed), version=magpie.VERSION,
                          params={"task": task, "system": system, "temperature": instruction_temperature,
                                  "max_tokens": instruction_max_tokens}, on_shard=progress("instructions"), **common)
    response_params = {"temperature": response_temperature, "max_tokens": response_max_tokens}
    stage_dir = run_stage(out, "responses", magpie.respond, source=stage_dir, version=magpie.VERSION,
                          params=response_params, on_shard=progress("responses"), **common)
    for turn in range(2, turns + 1):
        stage_dir = run_stage(out, f"followups-{turn}", magpie.follow_up, source=stage_dir, version=magpie.VERSION,
                              params={"max_tokens": instruction_max_tokens}, on_shard=progress(f"followups-{turn}"), **common)
        stage_dir = run_stage(out, f"responses-{turn}", magpie.respond, source=stage_dir, version=magpie.VERSION,
                              params=response_params, on_shard=progress(f"responses-{turn}"), **common)
    spec = filters.MAGPIE_BASIC if filter_spec is None else filter_spec
    stage_dir = run_stage(out, "filtered", filters.mark, source=stage_dir, version=FILTER_VERSION, params={"spec": spec},
                          shard_size=None, on_shard=progress("filtered"))
    path = export_parquet(out, stage_dir)
    return summarize(out) | {"export": str(path), "seconds": round(time.perf_counter() - started, 1)}


def summarize(run_dir: Path) -> dict:
    """Rows in/out and drops by reason per stage, from the manifest (latest entry per stage and shard)."""
    from pipeline.io import read_manifest

    latest: dict[tuple, dict] = {}
    for entry in read_manifest(run_dir):
        if entry.get("status") == "done":
            latest[(entry["stage"], entry["shard"])] = entry
    stages: dict[str, dict] = {}
    for (stage, _), entry in latest.items():
        s = stages.setdefault(stage, {"rows_in": 0, "rows_out": 0, "drops": {}, "seconds": 0.0})
        s["rows_in"] += entry["rows_in"]
        s["rows_out"] += entry["rows_out"]
        s["seconds"] = round(s["seconds"] + entry["seconds"], 2)
        for reason, count in entry["drops"].items():
            s["drops"][reason] = s["drops"].get(reason, 0) + count
    return {"stages": stages}
