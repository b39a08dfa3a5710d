"""Bring your own data: read Parquet, JSON arrays, JSON Lines or an HF `datasets` directory in OpenAI `messages`,
ShareGPT (`conversations` of {from, value}), Alpaca (`instruction`, `input`, `output`) or seed (`instruction`
alone) form, in batches of bounded size, and turn each row into a record or a quarantined row; `write_input`
writes them as a run's input stage.

Rows: a row that cannot become a valid conversation is quarantined with a `drop_reason` (QUARANTINE_REASONS),
its raw text kept in `meta.import.raw`; `strict=True` stops at the first one instead. Leading assistant turns
(long chats exported in parts open with the assistant) are removed and counted, as FastChat's ShareGPT
preprocessing does; a conversation left without a user turn is quarantined.

Files: truncated JSON, bytes that are not UTF-8, a file that is not Parquet are an InputError of one line naming
the file, the line or byte offset and what to do; `salvage=True` keeps the complete records and counts what it
skipped. A UTF-8 byte-order mark is accepted.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import polars as pl

from pipeline.core.codehash import code_hash
from pipeline.core.records import dump_meta, empty, record_id
from pipeline.core.rundir import append_manifest, check_identity, file_record, write_shard

FORMATS = ("messages", "sharegpt", "alpaca", "instructions")
# The fields a format makes the conversation from; a row's other fields are kept in meta.fields (e.g. the references
# BLEUBERI scores against), except what has a place of its own (id, category).
CONSUMED = {"messages": {"messages"}, "sharegpt": {"conversations"}, "alpaca": {"instruction", "input", "output"},
            "instructions": {"instruction", "input", "output"}}
OWN_PLACE = {"id", "category", "source", "meta"}
BATCH_ROWS = 20_000
RAW_CHARS = 2_000  # of a quarantined row's raw JSON kept in meta
# Roles of real exports: ShareGPT (human, gpt, chatgpt, bing, bard), Gemini (model), LLaMA-Factory (observation).
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system", "tool": "tool",
         "observation": "tool"}
QUARANTINE_REASONS = ("not_an_object", "empty_conversation", "not_a_list", "not_text", "empty_turn", "no_user_turn",
                      "unknown_role:<name>", "missing_field:<name>", "duplicate_id", "bad_line")


class InputError(ValueError):
    """Input data that cannot be read; the message names the file and the place, and says what to do."""


class BadRow(ValueError):
    """One row that cannot become a record: `reason` is its drop_reason, the message says where and why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class Batch:
    """Rows read from a file; `skipped` counts what salvage left out (bad lines, a truncated tail)."""

    rows: list
    first_row: int
    skipped: dict = field(default_factory=dict)


# ---- reading files in batches --------------------------------------------------------------------------

def read_batches(path: Path, *, batch_rows: int = BATCH_ROWS, salvage: bool = False) -> Iterator[Batch]:
    """The rows of `path` (dicts) in batches of at most `batch_rows`, never the whole file in memory."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        yield from _directory_batches(path, batch_rows)
    elif path.suffix == ".parquet":
        yield from _parquet_batches([path], batch_rows)
    elif path.suffix in (".jsonl", ".ndjson"):
        yield from _json_lines(path, batch_rows, salvage)
    elif path.suffix == ".json":
        yield from (_json_lines(path, batch_rows, salvage) if _first_char(path) == "{" else _json_array(path, batch_rows, salvage))
    else:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; use .parquet, .jsonl, .json or a datasets directory")


def _directory_batches(path: Path, batch_rows: int) -> Iterator[Batch]:
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        from datasets import load_from_disk

        data = load_from_disk(str(path))  # memory-mapped Arrow: batches are read as they are used
        if hasattr(data, "keys"):  # a DatasetDict: the train split, or the first
            data = data["train"] if "train" in data else data[next(iter(data.keys()))]
        start = 0
        for batch in data.data.table.to_batches(max_chunksize=batch_rows):
            yield Batch(batch.to_pylist(), start)
            start += batch.num_rows
        return
    # an aligndata stage directory: its kept shards only, never its dropped rows
    files = sorted(path.glob("shard-*.parquet")) or sorted(path.rglob("*.parquet"))
    if not files:
        raise InputError(f"{path}: a directory with no .parquet files and no datasets dataset_info.json")
    yield from _parquet_batches(files, batch_rows)


def _parquet_batches(files: list[Path], batch_rows: int) -> Iterator[Batch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = 0
    for file in files:
        try:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
                yield Batch(batch.to_pylist(), start)
                start += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: not a readable Parquet file ({str(exc).splitlines()[0]}); re-export it") from exc


def _first_char(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head[:1].decode("ascii", errors="replace")


def _json_lines(path: Path, batch_rows: int, salvage: bool) -> Iterator[Batch]:
    rows, skipped, first, offset = [], {}, 0, 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line_offset, offset = offset, offset + len(raw)
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                if not salvage:
                    raise InputError(f"{path}: line {number} (byte {line_offset + exc.start}) is not UTF-8; re-encode the "
                                     "file as UTF-8 (iconv -f LATIN1 -t UTF-8), or pass --salvage to skip such lines") from exc
                skipped["bad_line"] = skipped.get("bad_line", 0) + 1
            except json.JSONDecodeError as exc:
                if not salvage:
                    raise InputError(f"{path}: line {number} (column {exc.pos + 1}) is not valid JSON: {exc.msg}; fix or "
                                     "remove the line, or pass --salvage to skip such lines") from exc
                skipped["bad_line"] = skipped.get("bad_line", 0) + 1
            if len(rows) == batch_rows:
                yield Batch(rows, first, skipped)
                rows, skipped, first = [], {}, first + batch_rows
    if rows or skipped:
        yield Batch(rows, first, skipped)


def _json_array(path: Path, batch_rows: int, salvage: bool) -> Iterator[Batch]:
    """A top-level JSON array, parsed incrementally (ijson's C backend): memory holds one batch."""
    import ijson

    rows, first, count = [], 0, 0
    with open(path, "rb") as handle:
        if handle.read(3) != b"\xef\xbb\xbf":
            handle.seek(0)
        items = ijson.items(handle, "item", use_float=True)
        while True:
            try:
                row = next(items)
            except StopIteration:
                break
            except (ijson.JSONError, UnicodeDecodeError) as exc:
                at_end = handle.tell() >= path.stat().st_size
                truncated = at_end or (isinstance(exc, ijson.IncompleteJSONError) and "premature eof" in str(exc).lower())
                what = "is cut off (truncated)" if truncated else f"has invalid JSON or bytes ({str(exc).splitlines()[0]})"
                if not salvage:
                    raise InputError(f"{path}: the JSON array {what} after {count} complete records, near byte "
                                     f"{handle.tell()}; re-export the file, or pass --salvage to keep the {count} "
                                     "complete records") from exc
                yield Batch(rows, first, {"truncated_tail" if truncated else "bad_tail": 1})
                return
            rows.append(row)
            count += 1
            if len(rows) == batch_rows:
                yield Batch(rows, first)
                rows, first = [], first + batch_rows
    if rows:
        yield Batch(rows, first)


# ---- rows to records -------------------------------------------------------------------------------------

def detect_format(keys: set[str], path: Path | str = "input") -> str:
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "instruction" in keys:
        return "instructions"
    raise InputError(f"{path}: cannot tell the format from columns {sorted(keys)}; expected `messages` (OpenAI), "
                     "`conversations` (ShareGPT), `instruction` + `output` (Alpaca) or `instruction` (seeds)")


def conversation(row: object, fmt: str) -> tuple[list[dict], int]:
    """The row's conversation and how many leading assistant turns were removed; BadRow when it has none."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    if fmt in ("instructions", "alpaca"):
        instruction = row.get("instruction")
        if not isinstance(instruction, str):
            raise BadRow("not_text" if "instruction" in row else "missing_field:instruction", "field 'instruction': expected a string")
        if not instruction.strip():
            raise BadRow("empty_turn", "field 'instruction' is empty")
        extra, output = row.get("input"), row.get("output")
        user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        if fmt == "instructions":
            return [{"role": "user", "content": user}], 0
        if not isinstance(output, str):
            raise BadRow("not_text" if "output" in row else "missing_field:output", "field 'output': expected a string")
        if not output.strip():
            raise BadRow("empty_turn", "field 'output' is empty")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}], 0
    name, role_key, text_key = ("messages", "role", "content") if fmt == "messages" else ("conversations", "from", "value")
    turns = row.get(name)
    if turns is None or turns == []:
        raise BadRow("empty_conversation", f"field {name!r} is empty")
    if not isinstance(turns, list):
        raise BadRow("not_a_list", f"field {name!r}: expected a list of turns, got {type(turns).__name__}")
    messages = []
    for i, turn in enumerate(turns):
        turn = turn if isinstance(turn, dict) else {}
        speaker, content = turn.get(role_key), turn.get(text_key)
        role = ROLES.get(str(speaker).lower())
        if role is None:
            raise BadRow(f"unknown_role:{str(speaker)[:40]}", f"field '{name}[{i}].{role_key}': {speaker!r} is not one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise BadRow("not_text", f"field '{name}[{i}].{text_key}': the text is missing or not a string")
        if not content.strip():
            raise BadRow("empty_turn", f"field '{name}[{i}].{text_key}' is empty")
        messages.append({"role": role, "content": content})
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    leading = next((i for i, m in enumerate(rest) if m["role"] != "assistant"), len(rest))
    messages = system + rest[leading:]
    if not any(m["role"] == "user" for m in messages):
        raise BadRow("no_user_turn", f"field {name!r} has no user turn")
    return messages, leading


@dataclass
class Converted:
    """One batch as records: `kept` and `quarantined` frames, and the turns removed by repairs."""

    kept: pl.DataFrame
    quarantined: pl.DataFrame
    leading_assistant_turns_removed: int


def to_records(batch: Batch, *, path: Path | str, fmt: str, seen_ids: set[str], strict: bool = False) -> Converted:
    """Records from one batch in format `fmt`; bad rows quarantined (or, with `strict`, an InputError)."""
    name = Path(path).name
    kept = {"id": [], "messages": [], "meta": []}
    bad = {"id": [], "meta": [], "drop_reason": []}
    removed = 0
    for number, row in enumerate(batch.rows, start=batch.first_row):
        given = row.get("id") if isinstance(row, dict) else None
        rid = str(given) if given is not None else record_id("import", name, number)
        meta = {"import": {"file": name, "row": number, "format": fmt}}
        try:
            if rid in seen_ids:
                raise BadRow("duplicate_id", f"field 'id' has the duplicate value {rid!r}; ids must be unique")
            messages, leading = conversation(row, fmt)
        except BadRow as exc:
            if strict:
                raise InputError(f"{path}: row {number} {exc} (drop_reason {exc.reason}); fix the row, or run without "
                                 "--strict to quarantine such rows") from exc
            meta["import"]["raw"] = json.dumps(row, ensure_ascii=False, default=str)[:RAW_CHARS]
            bad["id"].append(record_id("quarantined", name, number))
            bad["meta"].append(meta)
            bad["drop_reason"].append(exc.reason)
            continue
        seen_ids.add(rid)
        removed += leading
        if leading:
            meta["import"]["leading_assistant_turns_removed"] = leading
        if isinstance(row.get("category"), str):
            meta["category"] = row["category"]
        fields = {k: v for k, v in row.items() if k not in CONSUMED[fmt] and k not in OWN_PLACE}
        if fields:
            meta["fields"] = fields
        kept["id"].append(rid)
        kept["messages"].append(messages)
        kept["meta"].append(meta)
    schema = empty().schema
    kept_frame = pl.DataFrame({"id": kept["id"], "source": ["import"] * len(kept["id"]), "messages": kept["messages"]},
                              schema={"id": pl.String, "source": pl.String, "messages": schema["messages"]})
    bad_frame = pl.DataFrame({"id": bad["id"], "source": ["import"] * len(bad["id"]), "drop_reason": bad["drop_reason"]},
                             schema={"id": pl.String, "source": pl.String, "drop_reason": pl.String})
    return Converted(kept_frame.with_columns(dump_meta(kept["meta"])), bad_frame.with_columns(dump_meta(bad["meta"])), removed)


def write_input(out: Path, path: Path, fmt: str | None = None, *, strict: bool = False, salvage: bool = False) -> Path:
    """DIR/input/: the input as record shards of up to BATCH_ROWS rows, read in batches (bounded memory).

    Rows that cannot become records go to input/dropped-*.parquet with their reason, counted in the manifest
    (`strict` stops at the first instead). Records written by aligndata (a run's export or a stage directory,
    whose dropped rows are never read) keep all their columns. input/stage.json records the file's content
    hash and the options: another input on the same run directory is refused; a re-run writes only missing shards.
    """
    path, input_dir = Path(path), Path(out) / "input"
    check_identity(input_dir, {"stage": "input", "code": code_hash(to_records), "file": path.name, "content": content_hash(path),
                               "format": fmt, "strict": strict, "salvage": salvage})
    seen: set[str] = set()  # ids across batches: every batch is converted, also on resume, to find duplicates
    index = -1
    for index, batch in enumerate(read_batches(path, salvage=salvage)):
        started = time.perf_counter()
        keys = keys_of(batch.rows)
        if {"id", "source", "meta"} <= keys:  # aligndata records
            kept = pl.from_dicts(batch.rows, infer_schema_length=None).drop("drop_reason", strict=False)
            converted = Converted(kept, kept.clear(), 0)
        else:
            fmt = fmt or detect_format(keys, path)
            converted = to_records(batch, path=path, fmt=fmt, seen_ids=seen, strict=strict)
        shard = input_dir / f"shard-{index:05d}.parquet"
        if shard.exists():
            continue
        quarantined = converted.quarantined
        drops = dict(sorted(quarantined.group_by("drop_reason").len().iter_rows())) if quarantined.height else {}
        if quarantined.height:
            write_shard(quarantined, input_dir / f"dropped-{index:05d}.parquet")
        write_shard(converted.kept, shard)
        removed = converted.leading_assistant_turns_removed
        append_manifest(out, {"stage": "input", "shard": index, "status": "done", "file": str(path),
                              "rows_in": len(batch.rows) + sum(batch.skipped.values()), "rows_out": converted.kept.height,
                              "drops": drops | batch.skipped, "nulls": {}, "seconds": round(time.perf_counter() - started, 3),
                              "repairs": {"leading_assistant_turns_removed": removed} if removed else {},
                              **file_record(shard)})
    if index < 0:
        raise InputError(f"{path}: no rows; nothing to do")
    return input_dir


def load(path: Path | str, fmt: str | None = None, *, strict: bool = True) -> pl.DataFrame:
    """All of `path` as records in memory (small files: reference sets, tests); strict by default."""
    frames, seen = [], set()
    for batch in read_batches(Path(path)):
        fmt = fmt or detect_format(keys_of(batch.rows), path)
        frames.append(to_records(batch, path=path, fmt=fmt, seen_ids=seen, strict=strict).kept)
    return pl.concat(frames) if frames else empty().select("id", "source", "messages", "meta")


def keys_of(rows: list) -> set[str]:
    """The columns of a batch (the keys of its first 1000 object rows)."""
    return set().union(*(row.keys() for row in rows[:1000] if isinstance(row, dict)))


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of every file under a directory (names included), streamed."""
    import hashlib

    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]
