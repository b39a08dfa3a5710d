"""Run one stage over a run directory, shard by shard, resumably.

A shard is finished when its Parquet file exists (written atomically, after its dropped rows), so a
crashed run resumes by skipping finished shards and redoing only the one it was in. Rows a stage marks
with `drop_reason` go to `dropped-*.parquet` and are counted in the manifest; if engine failures in a
shard exceed `max_failure_rate`, the shard is not written and the run stops with `EngineFailures`.
"""
from __future__ import annotations

import hashlib
import inspect
import time
import warnings
from pathlib import Path
from typing import Callable

import polars as pl

from pipeline.engines import ENGINE_ERROR, EngineSpec, load_engine
from pipeline.core.codehash import code_hash
from pipeline.engines.models import model_revision
from pipeline.core.rundir import ShardState, StageWarning, append_manifest, check_identity, read_shards, write_shard


class EngineFailures(RuntimeError):
    """Too many rows of a shard failed in the engine; finished shards are kept for the resume."""


def fingerprint(source: Path | pl.DataFrame) -> str:
    """Content hash of a stage's input: its shard files' bytes, or a frame's rows."""
    digest = hashlib.sha256()
    if isinstance(source, pl.DataFrame):
        digest.update(source.write_ipc(None).getvalue() if source.height else b"")
    else:
        for path in sorted(Path(source).glob("shard-*.parquet")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def describe(spec: EngineSpec) -> dict:
    """An engine as a stage's identity records it: its spec and the revision of its weights (model_revision)."""
    return spec.describe() | {"revision": model_revision(spec.backend, spec.model)}


def run_stage(run_dir: Path, name: str, stage: Callable[..., pl.DataFrame], *, source: Path | pl.DataFrame,
              params: dict | None = None, engine: EngineSpec | None = None,
              engines: dict[str, EngineSpec] | None = None, shard_size: int | None = 64, max_failure_rate: float = 0.1,
              computes: tuple[str, ...] = (), on_shard: Callable[[int, int], None] | None = None) -> Path:
    """Apply `stage(df, [engine=...], **params)` to `source` shard by shard; returns the stage directory.

    `shard_size=None` runs the whole input as one shard (stages that compare rows, such as dedup).
    `computes` names the columns the stage fills: their nulls among kept rows (a parse failure, a digit
    missing from the logprobs) are counted in the manifest.

    The runner does the stage's I/O: it loads `engine` (passed as `engine=`) and each of `engines` (a stage
    with more models declares them by role, e.g. `target=`, `base=`), and a stage with a `checkpoint`
    parameter gets a ShardState kept in the stage directory for resuming inside a shard.
    """
    run_dir, params = Path(run_dir), dict(params or {})
    stage_dir = run_dir / name
    frame = source if isinstance(source, pl.DataFrame) else read_shards(source).drop("drop_reason", strict=False)
    identity = {"stage": name, "code": code_hash(stage), "params": params, "shard_size": shard_size,
                "engine": describe(engine) if engine else None, "input": fingerprint(source),
                **({"engines": {role: describe(spec) for role, spec in engines.items()}} if engines else {}),
                "function": f"{stage.__module__}.{stage.__qualname__}"}
    check_identity(stage_dir, identity)
    size = shard_size or max(frame.height, 1)
    total = max(-(-frame.height // size), 1)
    models = {**(engines or {}), **({"engine": engine} if engine else {})}
    wants_checkpoint = "checkpoint" in inspect.signature(stage).parameters
    loaded: dict | None = None  # the models, loaded when the first unfinished shard needs them
    for index in range(total):
        shard_path = stage_dir / f"shard-{index:05d}.parquet"
        if not shard_path.exists():
            loaded = loaded if loaded is not None else {role: load_engine(spec) for role, spec in models.items()}
            kwargs = {**params, **loaded}
            if wants_checkpoint:
                kwargs["checkpoint"] = ShardState(stage_dir / f"state-{index:05d}.json")
            _run_shard(run_dir, stage_dir, shard_path, index, frame.slice(index * size, size), stage, identity,
                       kwargs, max_failure_rate, computes)
        if on_shard:
            on_shard(index + 1, total)
    return stage_dir


def _run_shard(run_dir, stage_dir, shard_path, index, shard, stage, identity, kwargs, max_failure_rate, computes):
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StageWarning)
        out = stage(shard, **kwargs)
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, StageWarning)})
    for w in caught:  # everything else is shown as it would have been
        if not issubclass(w.category, StageWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if "drop_reason" not in out.columns:
        out = out.with_columns(pl.lit(None, dtype=pl.String).alias("drop_reason"))
    dropped = out.filter(pl.col("drop_reason").is_not_null())
    drops = dict(sorted(dropped.group_by("drop_reason").len().iter_rows()))
    failures = sum(n for reason, n in drops.items() if reason.startswith(ENGINE_ERROR))
    kept = out.filter(pl.col("drop_reason").is_null())
    nulls = {c: kept[c].null_count() for c in computes if c in kept.columns and kept[c].null_count()}
    entry = {"stage": identity["stage"], "code": identity["code"], "shard": index, "rows_in": shard.height,
             "rows_out": kept.height, "drops": drops, "nulls": nulls, "seconds": round(time.perf_counter() - started, 3),
             "engine": identity["engine"], "params": identity["params"],
             **({"warnings": notes} if notes else {})}
    if shard.height and failures > max_failure_rate * shard.height:
        append_manifest(run_dir, {**entry, "status": "failed"})
        raise EngineFailures(
            f"stage {identity['stage']!r} shard {index}: {failures} of {shard.height} rows failed in the engine "
            f"({ {k: v for k, v in drops.items() if k.startswith(ENGINE_ERROR)} }), more than max_failure_rate="
            f"{max_failure_rate:.0%}. Finished shards are kept in {stage_dir}; check the engine (is the server up? "
            "the model path right?) and run the same command again to resume.")
    if dropped.height:
        write_shard(dropped, stage_dir / f"dropped-{index:05d}.parquet")
    write_shard(kept, shard_path)
    append_manifest(run_dir, {**entry, "status": "done"})
