"""Run directories: atomic Parquet shards and an append-only manifest.

Layout of a run directory::

    DIR/manifest.jsonl                one JSON line per finished shard and per export
    DIR/<stage>/stage.json            what made the stage: version, parameters, engine, input
    DIR/<stage>/shard-00000.parquet   kept rows; its existence marks the shard finished
    DIR/<stage>/dropped-00000.parquet rows dropped in that shard, with `drop_reason` (written, empty or not, first)
    DIR/export/data.parquet           the final rows
    DIR/run.json                      a scheduled run's name, seed and scheduled time (flows with `runs`)
    DIR/.aligndata.lock               held by the one command writing the directory (its pid, host and command)

A shard finishes in this order: its dropped rows are written (an empty file when none), then its kept rows to a
temporary file, then its manifest line, then the rename that makes it visible. A crash at any point leaves either
no shard (the resume redoes it, replacing the dropped file) or a shard with its manifest line; a manifest line whose
shard never appeared is not counted.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.records import SCHEMA, RecordError, conform, empty
from pipeline.core.secrets import redact
from pipeline.core.writing import LOCK, RunDirBusy, WriteError, write_atomic, write_failure, writer_lock  # noqa: F401

MANIFEST = "manifest.jsonl"


ROW_GROUP = 16_384


def write_shard(df: pl.DataFrame | pa.Table, path: Path, rows: pl.Series | None = None,
                before_rename: Callable[[Path], None] | None = None) -> Path:
    """Conform `df` to the record schema and write it atomically as Parquet; with `rows` (a boolean mask) only
    those rows, filtered and conformed one row group at a time, so writing most of a frame of millions of rows
    never copies it whole. `before_rename(tmp)` runs when the file is complete, before it becomes visible."""
    if rows is None:
        table = df if isinstance(df, pa.Table) else conform(df, where=str(path))
        return write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP),
                            before_rename)
    ids = df["id"].filter(rows)
    if ids.is_duplicated().any():
        raise RecordError(f"{path}: id {ids.filter(ids.is_duplicated())[0]!r} is duplicated")

    def write(tmp) -> None:
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for start in range(0, df.height, ROW_GROUP):
                part = df.slice(start, ROW_GROUP).filter(rows.slice(start, ROW_GROUP)).rechunk()
                if part.height:
                    writer.write_table(conform(part, where=f"{path} (rows from {start})"), row_group_size=ROW_GROUP)

    return write_atomic(path, write, before_rename)


def write_json(obj: object, path: Path) -> Path:
    """Write a JSON document atomically, secrets redacted."""
    text = json.dumps(redact(obj), indent=2, sort_keys=True) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_shards(stage_dir: Path, pattern: str = "shard-*.parquet") -> pl.DataFrame:
    """All shards of a stage, in shard order, as one frame (empty frame if there are none)."""
    paths = sorted(Path(stage_dir).glob(pattern))
    if not paths:
        return empty()
    return pl.concat([pl.read_parquet(p) for p in paths], how="vertical")


class LazyShards:
    """A stage's rows read by range, never all at once: the row count comes from the Parquet footers, and a slice
    reads only the files (and row groups) it covers. Also wraps an in-memory frame, for stages fed one."""

    def __init__(self, source: Path | pl.DataFrame):
        if isinstance(source, pl.DataFrame):
            self.frame, self.height = source.drop("drop_reason", strict=False), source.height
            return
        self.frame = None
        self.paths = sorted(Path(source).glob("shard-*.parquet"))
        footers = [pq.ParquetFile(p).metadata for p in self.paths]
        self.groups = [(p, [f.row_group(g).num_rows for g in range(f.num_row_groups)]) for p, f in zip(self.paths, footers)]
        self.height = sum(f.num_rows for f in footers)
        # Most schema columns are null in a given stage (a column per method): those become constant columns, which
        # cost nothing, instead of a values buffer per column (at 5M rows, ~40 MB each)
        self.null_columns = set.intersection(*[_null_columns(f) for f in footers if f.num_rows]) if self.height else set()

    def slice(self, offset: int, length: int) -> pl.DataFrame:
        if self.frame is not None:
            return self.frame.slice(offset, length)
        if not self.paths:
            return empty()
        scan = pl.scan_parquet(self.paths).slice(offset, length)
        schema = {c: t for c, t in scan.collect_schema().items() if c != "drop_reason"}
        nulls = [c for c in schema if c in self.null_columns]
        rows = scan.drop(["embedding", "drop_reason", *nulls], strict=False).collect()
        rows = rows.with_columns(pl.lit(None, dtype=schema[c]).alias(c) for c in nulls)
        if "embedding" in schema and "embedding" not in nulls:
            vectors = self._vectors(offset, rows.height)
            rows = rows.with_columns(scan.select("embedding").collect().to_series() if vectors is None else vectors)
        return rows.select(list(schema))

    def _vectors(self, offset: int, length: int) -> pl.Series | None:
        """The `embedding` column of rows [offset, offset + length) as one chunk, filled row group by row group
        into one buffer (a stage over millions of rows then holds its embeddings once, and `embed.matrix` views
        them); None when a vector is missing or the lengths differ (the caller reads the column as it is)."""
        buffer, filled, start = None, 0, 0
        for path, groups in self.groups:
            reader = None  # opened once per file, and only for a file the range covers
            for group, rows in enumerate(groups):
                lo, hi = max(offset - start, 0), min(offset + length - start, rows)
                start += rows
                if hi <= lo:
                    continue
                reader = reader or pq.ParquetFile(path)
                column = reader.read_row_group(group, columns=["embedding"]).column(0)
                column = column.slice(lo, hi - lo).combine_chunks()
                values = column.flatten().to_numpy()
                dim = len(values) // max(len(column), 1)
                if column.null_count or dim == 0 or len(values) != dim * len(column) or (
                        buffer is not None and buffer.shape[1] != dim):
                    return None
                if buffer is None:
                    buffer = np.empty((length, dim), dtype=np.float32)
                buffer[filled:filled + len(column)] = values.reshape(-1, dim)
                filled += len(column)
        pa.default_memory_pool().release_unused()  # the row groups' buffers, which Arrow's pool would keep
        return pl.Series("embedding", buffer).cast(pl.List(pl.Float32)) if buffer is not None else None


def _null_columns(footer: pq.FileMetaData) -> set[str]:
    """Top-level primitive columns without a value in any row group of a Parquet file, from its footer's statistics."""
    found = None
    for index in range(footer.num_row_groups):
        group = footer.row_group(index)
        empty = {chunk.path_in_schema for chunk in map(group.column, range(group.num_columns))
                 if (stats := chunk.statistics) is not None and stats.has_null_count and stats.null_count == group.num_rows}
        found = empty if found is None else found & empty
    return found or set()


def read_records(path: Path) -> pl.DataFrame:
    """Read a Parquet file or a stage directory written by this package, checking the schema."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such file or directory")
    try:
        df = read_shards(path) if path.is_dir() else pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise RecordError(f"{path}: not a Parquet file of records ({str(exc).splitlines()[0]}); pass a run's "
                          "export/data.parquet or a stage directory") from exc
    conform(df, where=str(path))
    return df


class StageWarning(UserWarning):
    """Something a stage wants on the record (the runner writes it to the shard's manifest line and the card
    lists it), e.g. a model template that disagrees with the Magpie registry."""


class StageMismatch(RuntimeError):
    """A run directory holds this stage made with other parameters or other input."""


def check_identity(stage_dir: Path, identity: dict) -> None:
    """Record what makes a stage (stage.json) or, when it is recorded already, refuse anything different."""
    path = stage_dir / "stage.json"
    if path.exists():
        previous = json.loads(path.read_text())
        current = json.loads(json.dumps(redact(identity), default=str))  # stage.json is written redacted
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current[k])
            raise StageMismatch(f"{stage_dir} was made with different {changed}; use a new --out directory, "
                                f"or delete {stage_dir} (and the stages after it) to recompute")
    else:
        write_json(identity, path)


class ShardState:
    """A stage's resumable state for one shard (e.g. MCTS trees after every iteration), kept by the runner in
    DIR/<stage>/state-<shard>.json: `load()` gives what the last `save(obj)` wrote, or None."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self):
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def save(self, obj) -> None:
        write_json(obj, self.path)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def scheduled_run(base: Path, name: str, base_seed: int = 0) -> tuple[Path, int]:
    """The run directory BASE/NAME of a scheduled run and its seed, derived from (base_seed, name), so that
    every night samples anew while a re-run of the same night resumes it with the same seed.

    >>> scheduled_run(Path("runs/nightly"), "2026-11-30")
    (PosixPath('runs/nightly/2026-11-30'), 1189714985)
    """
    if not RUN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r} is not a directory name: use letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit (e.g. 2026-11-30)")
    digest = hashlib.sha256(f"{base_seed}:{name}".encode()).hexdigest()
    return Path(base) / name, int(digest[:8], 16) % 2**31


def record_run(run_dir: Path, info: dict) -> dict:
    """DIR/run.json: what a scheduled run is (name, seed, scheduled time, first flow run), written by its first
    attempt and kept by the retries and re-runs that resume it; returns what is recorded."""
    path = Path(run_dir) / "run.json"
    if path.exists():
        return json.loads(path.read_text())
    write_json(info, path)
    return info


def append_manifest(run_dir: Path, entry: dict) -> None:
    """Append one JSON line to the run's manifest (small single writes are atomic with O_APPEND); secrets redacted.
    Every line says when and where it was written (host and pid: a Ray worker, a Prefect worker). A torn last line
    (a crash mid-write) is cut off first, so no line is glued onto it."""
    where = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid()}
    line = json.dumps(redact({**where, **entry}), sort_keys=True, default=str)
    path = Path(run_dir) / MANIFEST
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                tail = os.pread(fd, min(size, 1 << 20), max(size - (1 << 20), 0))
                os.ftruncate(fd, max(size - (1 << 20), 0) + tail.rfind(b"\n") + 1)
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_failure(exc, path) from exc


def file_record(path: Path) -> dict:
    """What the manifest records of a finished shard file so later fingerprints need not read it again: its sha256,
    size and modification time."""
    stat = path.stat()
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    return {"sha256": digest.hexdigest(), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def shard_fingerprint(stage_dir: Path) -> str:
    """Content hash of a stage directory's shards without re-reading them: each shard's sha256 as the run's manifest
    recorded it when the shard was written, trusted while the file's size and mtime are the recorded ones; a shard
    the manifest does not describe (or that changed since) is hashed from its bytes."""
    stage_dir = Path(stage_dir)
    recorded = {}
    for entry in read_manifest(stage_dir.parent):
        if entry.get("stage") == stage_dir.name and entry.get("status") == "done" and "sha256" in entry:
            recorded[f"shard-{entry['shard']:05d}.parquet"] = entry
    digest = hashlib.sha256()
    for path in sorted(stage_dir.glob("shard-*.parquet")):
        entry, stat = recorded.get(path.name), path.stat()
        known = entry and entry["bytes"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns
        digest.update(path.name.encode())
        digest.update(bytes.fromhex(entry["sha256"]) if known else bytes.fromhex(file_record(path)["sha256"]))
    return digest.hexdigest()[:16]


def read_manifest(run_dir: Path) -> list[dict]:
    """The manifest's entries; a torn last line (a crash mid-write) is ignored, a broken line elsewhere is an error."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    torn = lines.pop() if lines else ""  # after the last newline: "" unless a write was cut off
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}: line {number} is not a JSON line ({exc.msg}); the manifest was edited or damaged: "
                              "restore it, or start a new run directory") from exc
    del torn  # a line with no newline yet: the crash of a writer mid-line, never counted
    return entries


def shard_path(run_dir: Path, entry: dict) -> Path:
    """The file a manifest line of a finished shard describes."""
    return Path(run_dir) / entry["stage"] / f"shard-{entry['shard']:05d}.parquet"


def stage_complete(stage_dir: Path) -> bool:
    """Whether every shard the manifest records as finished for this stage is there, as it was written (size and
    modification time); a flow's cached step whose shards were deleted or replaced is not complete."""
    stage_dir = Path(stage_dir)
    latest: dict[int, dict] = {}
    for entry in read_manifest(stage_dir.parent):
        if entry.get("stage") == stage_dir.name and entry.get("status") == "done" and "shard" in entry:
            latest[entry["shard"]] = entry
    for entry in latest.values():
        path = shard_path(stage_dir.parent, entry)
        if not path.exists() or ("bytes" in entry and path.stat().st_size != entry["bytes"]):
            return False
    return True


def summarize(run_dir: Path) -> dict:
    """Rows in/out, drops by reason, seconds, and tokens and cost per model, per stage, from the manifest's finished
    shards (each shard's latest line); `cost_usd` is None where a model had no price."""
    latest: dict[tuple, dict] = {}
    for entry in read_manifest(run_dir):
        # a line whose shard never appeared (a crash between the line and the rename) is not counted
        if entry.get("status") == "done" and shard_path(run_dir, entry).exists():
            latest[(entry["stage"], entry["shard"])] = entry
    stages: dict[str, dict] = {}
    for (stage, _), entry in latest.items():
        s = stages.setdefault(stage, {"rows_in": 0, "rows_out": 0, "drops": {}, "nulls": {}, "seconds": 0.0})
        s["rows_in"] += entry["rows_in"]
        s["rows_out"] += entry["rows_out"]
        s["seconds"] = round(s["seconds"] + entry["seconds"], 2)
        for reason, count in entry["drops"].items():
            s["drops"][reason] = s["drops"].get(reason, 0) + count
        for column, count in entry.get("nulls", {}).items():
            s["nulls"][column] = s["nulls"].get(column, 0) + count
        for key, count in (entry.get("counts") or {}).items():  # a stage's own counts (runner: tally)
            s.setdefault("counts", {})[key] = s.get("counts", {}).get(key, 0) + count
        for used in (entry.get("tokens") or {}).values():
            tokens = s.setdefault("tokens", {}).setdefault(used["model"], {"backend": used["backend"]})
            for key, value in used.items():
                if key == "cost_usd":  # None (no price) stays None
                    tokens[key] = None if value is None or tokens.get(key, 0.0) is None else round(tokens.get(key, 0.0) + value, 6)
                elif key not in ("backend", "model"):
                    tokens[key] = tokens.get(key, 0) + value
        if "cost_usd" in entry:
            s["cost_usd"] = None if entry["cost_usd"] is None or s.get("cost_usd", 0.0) is None else \
                round(s.get("cost_usd", 0.0) + entry["cost_usd"], 6)
    return {"stages": stages}


__all__ = ["SCHEMA", "RunDirBusy", "ShardState", "StageMismatch", "WriteError", "stage_complete", "writer_lock", "check_identity", "record_run", "scheduled_run", "summarize", "append_manifest", "read_manifest", "read_records", "read_shards", "write_json", "write_shard"]
