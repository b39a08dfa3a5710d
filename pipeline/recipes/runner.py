"""Run one stage over a run directory, shard by shard, resumably.

A shard is finished when its Parquet file exists (written atomically, after its dropped rows and its manifest line:
rundir's write order), so a crashed run resumes by skipping finished shards and redoing only the ones in flight.
Shards are for durability, not for the engine's batch: an engine stage is called on a *window* of consecutive
unfinished shards of up to `engine_batch_rows(spec)` rows (vLLM 1024, an OpenAI-compatible server 256; one shard
for llama.cpp, which decodes one sequence at a time), and its output is split back into those shards, each written
and logged on its own. Rows are seeded per row, so the window does not change them. Rows a stage marks
with `drop_reason` go to `dropped-*.parquet` and are counted in the manifest; if engine failures in a
shard exceed `max_failure_rate`, the shard is not written and the run stops with `EngineFailures`.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Callable

import polars as pl

from pipeline.engines import ENGINE_ERROR, EngineSpec, load_engine
from pipeline.core.codehash import code_hash
from pipeline.core.devices import free_host_memory
from pipeline.engines.models import model_revision
from pipeline.core.notices import notice
from pipeline.engines.batches import BATCH_DIR
from pipeline.recipes.budget import check_prices, check_window, priced
from pipeline.recipes.replicas import EXECUTION, call_stage, gpus_per_replica
from pipeline.core.rundir import (LazyShards, ShardState, append_manifest, check_identity, file_record,
                                  shard_fingerprint, write_shard)


SHARD = "_shard"  # which shard of a window a row came from (stages keep the columns they are given)


class EngineFailures(RuntimeError):
    """Too many rows of a shard failed in the engine; finished shards are kept for the resume."""


def fingerprint(source: Path | pl.DataFrame) -> str:
    """Content hash of a stage's input: its shards' hashes as the manifest recorded them (rundir.shard_fingerprint),
    or a frame's rows."""
    if isinstance(source, pl.DataFrame):
        return hashlib.sha256(source.write_ipc(None).getvalue() if source.height else b"").hexdigest()[:16]
    return shard_fingerprint(Path(source))


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
    frame = LazyShards(source)  # memory follows the window, not the stage
    identity = {"stage": name, "code": code_hash(stage), "params": params, "shard_size": shard_size,
                "engine": describe(engine) if engine else None, "input": fingerprint(source),
                **({"engines": {role: describe(spec) for role, spec in engines.items()}} if engines else {}),
                "function": f"{stage.__module__}.{stage.__qualname__}"}
    check_identity(stage_dir, identity)
    for stale in stage_dir.glob(".*.tmp"):  # a killed writer's half file (one writer per run directory: not ours)
        stale.unlink(missing_ok=True)
    size = shard_size or max(frame.height, 1)
    total = max(-(-frame.height // size), 1)
    models = {**(engines or {}), **({"engine": engine} if engine else {})}
    wants_checkpoint = "checkpoint" in inspect.signature(stage).parameters
    loaded: dict | None = None  # the models, loaded when the first unfinished shard needs them
    batch_rows = 0 if wants_checkpoint else max((engine_batch_rows(spec) for spec in models.values()), default=0)
    heights = [min(size, frame.height - i * size) for i in range(total)]
    pool_settings = EXECUTION.get() if models and not wants_checkpoint else None
    if pool_settings:  # every replica gets work: windows of at most an equal share of the rows
        batch_rows = min(batch_rows, -(-frame.height // pool_settings.count))
    windows = list(_windows(heights, batch_rows, lambda i: (stage_dir / f"shard-{i:05d}.parquet").exists()))
    progress = _progress(on_shard, total, sum(not w for w in windows))

    def window_rows(window: list[int]) -> pl.DataFrame:
        """The window's input rows, read once, each tagged with its shard."""
        return _tagged(window, [frame.slice(index * size, size) for index in window])

    def write(window: list[int], tagged: pl.DataFrame, result) -> None:
        _write_window(run_dir, stage_dir, window, tagged, result, identity, max_failure_rate, computes,
                      redo=lambda i, rows: run_window([i], rows), tally=getattr(stage, "tally", None))
        progress(len(window))

    def run_window(window: list[int], tagged: pl.DataFrame) -> None:
        nonlocal loaded
        check_window(run_dir, name, tagged.height)
        loaded = loaded if loaded is not None else {role: load_engine(spec) for role, spec in models.items()}
        kwargs = {**params, **loaded}
        if wants_checkpoint:
            kwargs["checkpoint"] = ShardState(stage_dir / f"state-{window[0]:05d}.json")
        token = BATCH_DIR.set(stage_dir / "batches")  # where a provider batch keeps its id (pipeline.engines.batches)
        try:
            result = call_stage(stage, tagged, kwargs)
        finally:
            BATCH_DIR.reset(token)
        write(window, tagged, result)

    work = [w for w in windows if w]
    if work:
        check_prices(models.values())
    if work and models and wants_checkpoint and EXECUTION.get():
        notice(run_dir, name, "replicas_unused", f"this stage keeps resumable state inside each shard, so it runs in "
                                                 f"this process, not on the {EXECUTION.get().count} replicas")
    if pool_settings and work:
        from pipeline.recipes.replicas import ReplicaPool

        pool = ReplicaPool(pool_settings, {role: spec.to_json() for role, spec in models.items()},
                           gpus=gpus_per_replica(models.values()),
                           on_notice=lambda event, message: notice(run_dir, name, event, message))
        inputs: dict[tuple, pl.DataFrame] = {}  # each window's rows, kept from its dispatch until it is written

        def dispatch(window: list[int]):
            inputs[tuple(window)] = window_rows(window)
            check_window(run_dir, name, inputs[tuple(window)].height)
            return stage, inputs[tuple(window)], params, str(stage_dir / "batches")

        try:
            pool.map(work, dispatch, lambda window, result: write(window, inputs.pop(tuple(window)), result))
        finally:
            pool.close()
    else:
        for window in work:
            run_window(window, window_rows(window))
    free_host_memory()
    return stage_dir


def _progress(on_shard: Callable[[int, int], None] | None, total: int, finished: int) -> Callable[[int], None]:
    done = [finished]

    def advance(shards: int) -> None:
        done[0] += shards
        if on_shard:
            on_shard(min(done[0], total), total)

    advance(0)
    return advance


def engine_batch_rows(spec: EngineSpec) -> int:
    """Rows per engine call across shards: the `batch_rows` option, else the backend's (vLLM 1024: its scheduler
    fills the GPU with hundreds of sequences; a server or hosted API 256, so `concurrency` requests stay in flight;
    0, one shard, for engines that decode one sequence at a time)."""
    return int(spec.opts.get("batch_rows", {"vllm": 1024, "openai": 256, "openai-chat": 256, "anthropic": 256}.get(spec.backend, 0)))


def _windows(rows: list[int], batch_rows: int, finished: Callable[[int], bool]):
    """Consecutive unfinished shard indices (shard i has rows[i] rows), grouped up to `batch_rows` rows (at least one
    shard per group); a finished shard yields [] so progress still counts it."""
    window: list[int] = []
    for index, height in enumerate(rows):
        if finished(index):
            if window:
                yield window
                window = []
            yield []
            continue
        if window and sum(rows[i] for i in window) + height > batch_rows:
            yield window
            window = []
        window.append(index)
    if window:
        yield window


def _shard_of_rows(tagged: pl.DataFrame, out: pl.DataFrame, window: list[int]) -> pl.DataFrame | None:
    """`out` with each row's shard, for a stage that built a new frame: by its `id`, else its `parent_id`, among the
    input's ids; None when a row matches neither (only a one-shard window can then be written)."""
    if len(window) == 1:
        return out.with_columns(pl.lit(window[0], dtype=pl.Int64).alias(SHARD))
    shard_of = dict(zip(tagged["id"].to_list(), tagged[SHARD].to_list()))
    parents = out["parent_id"].to_list() if "parent_id" in out.columns else [None] * out.height
    shards = [shard_of.get(rid, shard_of.get(parent)) for rid, parent in zip(out["id"].to_list(), parents)]
    return None if None in shards else out.with_columns(pl.Series(SHARD, shards, dtype=pl.Int64))


def _tagged(window: list[int], shards: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat([shard.with_columns(pl.lit(index, dtype=pl.Int64).alias(SHARD)) for index, shard in zip(window, shards)])


def _write_window(run_dir, stage_dir, window, tagged, result, identity, max_failure_rate, computes, redo,
                  tally=None) -> None:
    """Split a window's output back into its shards (`tagged`: the window's input, with each row's shard) and write
    each in order; `redo(index, rows)` reruns a shard alone when the stage built rows that cannot be traced to one.
    `tally(rows_in, rows_out)`, a stage's own counts of a shard (the `pii` stage's values found per type), is kept
    in the shard's manifest line as `counts`."""
    out, notes, seconds, used = result
    if SHARD not in out.columns:
        out = _shard_of_rows(tagged, out, window)
        if out is None:  # rows the stage made anew, from no input id: go shard by shard
            for index in window:
                redo(index, tagged.filter(pl.col(SHARD) == index))
            return
    rows_in = dict(tagged.group_by(SHARD).len().iter_rows())
    total = max(sum(rows_in.values()), 1)
    for index in window:
        rows = out if len(window) == 1 else out.filter(pl.col(SHARD) == index)  # one shard: no copy
        tokens, cost = priced(used, rows_in.get(index, 0) / total)  # the window's usage, by each shard's rows
        spent = {"tokens": tokens, "cost_usd": cost} if tokens else {}
        if tally is not None:
            spent["counts"] = tally(tagged.filter(pl.col(SHARD) == index).drop(SHARD), rows.drop(SHARD))
        _finish_shard(run_dir, stage_dir, index, rows_in.get(index, 0), rows.drop(SHARD),
                      identity, notes, seconds / len(window), max_failure_rate, computes, spent)


def _finish_shard(run_dir, stage_dir, index, rows_in, out, identity, notes, seconds, max_failure_rate, computes, spent):
    if "drop_reason" not in out.columns:
        out = out.with_columns(pl.lit(None, dtype=pl.String).alias("drop_reason"))
    # Masks and counts only: the kept and dropped rows are written from `out` without copying it (write_shard).
    is_kept = out["drop_reason"].is_null()
    drops = dict(sorted(out.select("drop_reason").drop_nulls().group_by("drop_reason").len().iter_rows()))
    failures = sum(n for reason, n in drops.items() if reason.startswith(ENGINE_ERROR))
    nulls = {c: n for c in computes if c in out.columns and (n := out[c].filter(is_kept).null_count())}
    entry = {"stage": identity["stage"], "code": identity["code"], "shard": index, "rows_in": rows_in,
             "rows_out": int(is_kept.sum()), "drops": drops, "nulls": nulls, "seconds": round(seconds, 3),
             "engine": identity["engine"], "params": identity["params"], **spent,
             **({"warnings": notes} if notes else {})}
    if rows_in and failures > max_failure_rate * rows_in:
        append_manifest(run_dir, {**entry, "status": "failed"})
        raise EngineFailures(
            f"stage {identity['stage']!r} shard {index}: {failures} of {rows_in} rows failed in the engine "
            f"({ {k: v for k, v in drops.items() if k.startswith(ENGINE_ERROR)} }), more than max_failure_rate="
            f"{max_failure_rate:.0%}. Finished shards are kept in {stage_dir}; check the engine (is the server up? "
            "the model path right?) and run the same command again to resume.")
    # The shard's dropped rows first, always (an empty file replaces a crashed attempt's), then its kept rows, whose
    # manifest line is written before the rename that finishes the shard (rundir's write order).
    write_shard(out, stage_dir / f"dropped-{index:05d}.parquet", rows=~is_kept)
    write_shard(out, stage_dir / f"shard-{index:05d}.parquet", rows=is_kept,
                before_rename=lambda tmp: append_manifest(run_dir, {**entry, "status": "done", **file_record(tmp)}))
