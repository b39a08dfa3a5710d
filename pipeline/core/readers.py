"""Reading the files users have, in batches of bounded size: the rows of a file, a directory or a pattern as
dicts, never a whole file in memory (pipeline.core.inputs makes them records).

Files (`input_files`): a file; a directory's data files by name (.parquet, .jsonl/.ndjson, .json, .csv, .tsv, each
optionally .gz/.zst/.bz2/.xz), recursively, sorted by relative path, skipping names that start with `.` or `_`
(`_SUCCESS`, `.cache/`) and metadata (METADATA_NAMES), of one family only (Parquet, JSON or CSV: a mix is an error
that says to pass a pattern); an aligndata stage directory's `shard-*.parquet` only, never its dropped rows; a
`datasets` directory (`dataset_info.json`) through `datasets.load_from_disk`; a pattern (`data/part-*.jsonl`, `**`
included) that is not a path, expanded and sorted. A run directory is refused (pass its export). A file's kind
comes from its name with the compression suffix removed and, when the name says nothing (`data.gz`, `data.txt`),
from its content (Parquet's magic, a JSON `[` or `{`). Compressed files are streamed, never decompressed whole; a
compressed Parquet file is refused (Parquet is read by row groups). A JSON object wrapping the rows is parsed twice
(once to find its one list of rows), each time incrementally. `content_hash` covers every file read, names included.

Errors: truncated JSON or compressed data, bytes that are not UTF-8, a CSV line with the wrong number of fields,
a file that is not Parquet are an InputError of one line naming the file, the line or byte offset (of the
decompressed text, for a compressed file) and what to do; `salvage=True` keeps the complete records and counts
what it skipped. A UTF-8 byte-order mark is accepted.

"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterator

from pipeline.core.datafiles import (COMPRESSED_SUFFIXES, DECOMPRESS_ERRORS, Batch, InputError, compression, open_data,
                                     unreadable)

BATCH_ROWS = 20_000
KINDS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
FAMILIES = {"parquet": "Parquet", "jsonl": "JSON", "json": "JSON", "csv": "CSV", "tsv": "CSV"}
# Metadata a directory may hold beside its data (HF's legacy split info, a stage's identity): never rows.
METADATA_NAMES = {"dataset_infos.json", "stage.json", "manifest.jsonl"}
# A top-level JSON object holding one of these keys is a row (JSON Lines), not an object wrapping the rows.
ROW_FIELDS = {"messages", "conversations", "instruction"}
FILE_TYPES = ".parquet, .jsonl, .json, .csv or .tsv (compressed or not), a directory or pattern of them, or a datasets directory"


# ---- which files ----------------------------------------------------------------------------------------

def input_files(path: Path | str) -> list[Path]:
    """The files `path` stands for, in reading order (see the module docstring); InputError when there are none.

    >>> input_files("no/such/part-*.jsonl")
    Traceback (most recent call last):
    pipeline.core.datafiles.InputError: no/such/part-*.jsonl: no file matches this pattern; check the folder and the pattern
    """
    path = Path(path)
    if path.is_dir():
        if _is_datasets_dir(path):
            return sorted(p for p in path.rglob("*") if p.is_file())
        return _directory_files(path)
    if path.exists():
        return [path]
    if any(c in str(path) for c in "*?["):
        import glob

        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"{path}: no file matches this pattern; check the folder and the pattern")
        return files
    raise InputError(f"{path}: no such file or directory")


def _is_datasets_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def _kind_by_name(file: Path) -> str | None:
    """parquet, jsonl, json, csv or tsv from the name, a compression suffix removed; None when it says nothing."""
    suffixes = [s.lower() for s in file.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return KINDS.get(suffixes[-1]) if suffixes else None


def _directory_files(path: Path) -> list[Path]:
    shards = sorted(path.glob("shard-*.parquet"))
    if shards:  # an aligndata stage directory: its kept shards only, never its dropped rows
        return shards
    if (path / "manifest.jsonl").exists():
        raise InputError(f"{path}: a run directory; pass its export/data.parquet or one stage directory in it")
    files = [p for p in path.rglob("*") if p.is_file() and _kind_by_name(p) and p.name not in METADATA_NAMES
             and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
             and not ((p.parent / "stage.json").exists() and not p.name.startswith("shard-"))]  # a stage's dropped rows
    if not files:
        raise InputError(f"{path}: a directory with no data files ({FILE_TYPES})")
    families = sorted({FAMILIES[_kind_by_name(p)] for p in files})
    if len(families) > 1:
        raise InputError(f"{path}: a directory with both {' and '.join(families)} files; pass the ones to read as a "
                         f"quoted pattern, e.g. --input '{path}/*.parquet'")
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def _root(path: Path, files: list[Path]) -> Path:
    """What the names of `files` are relative to: the directory, or the folder the matched files share."""
    return path if path.is_dir() else Path(os.path.commonpath([str(f.parent) for f in files]))


# ---- reading files in batches --------------------------------------------------------------------------

def read_batches(path: Path | str, *, batch_rows: int = BATCH_ROWS, salvage: bool = False) -> Iterator[Batch]:
    """The rows of `path` (dicts) in batches of at most `batch_rows`, never a whole file in memory.

    A batch holds rows of one file; files are read in `input_files` order and rows numbered across them.
    """
    path = Path(path)
    if _is_datasets_dir(path):
        yield from _datasets_batches(path, batch_rows)
        return
    files = input_files(path)
    several = path.is_dir() or not path.exists()  # a directory or a pattern: say which file each row is from
    root = _root(path, files) if several else None
    start = 0
    for file in files:
        in_file = 0
        for batch in _file_batches(file, batch_rows, salvage):
            if several:
                batch.file, batch.file_name, batch.file_row = file, file.relative_to(root).as_posix(), in_file
            batch.first_row = start
            start += len(batch.rows)
            in_file += len(batch.rows)
            yield batch


def _datasets_batches(path: Path, batch_rows: int) -> Iterator[Batch]:
    from datasets import load_from_disk

    data = load_from_disk(str(path))  # memory-mapped Arrow: batches are read as they are used
    if hasattr(data, "keys"):  # a DatasetDict: the train split, or the first
        data = data["train"] if "train" in data else data[next(iter(data.keys()))]
    start = 0
    for batch in data.data.table.to_batches(max_chunksize=batch_rows):
        yield Batch(batch.to_pylist(), start)
        start += batch.num_rows


def _file_batches(file: Path, batch_rows: int, salvage: bool) -> Iterator[Batch]:
    """One file's rows by its kind (name first, then content); `first_row` counts from 0 in the file."""
    kind = _kind_by_name(file)
    if kind == "parquet" and file.suffix.lower() == ".parquet":  # compressed inside; never wrapped in gzip & co
        yield from _parquet_batches(file, batch_rows)
        return
    codec = compression(file)
    if kind is None:
        kind = _kind_by_content(file, codec)
    if kind == "parquet":
        if codec:
            raise InputError(f"{file}: a Parquet file compressed with {codec}; decompress it first (Parquet is read by row "
                             "groups and compresses its own columns)")
        yield from _parquet_batches(file, batch_rows)
    elif kind == "jsonl":
        yield from _json_lines(file, codec, batch_rows, salvage)
    elif kind == "json":
        if _first_char(file, codec) == "{":
            key = _rows_key(file, codec)
            yield from (_json_array(file, codec, batch_rows, salvage, key) if key else _json_lines(file, codec, batch_rows, salvage))
        else:
            yield from _json_array(file, codec, batch_rows, salvage)
    elif kind in ("csv", "tsv"):
        yield from _delimited(file, codec, batch_rows, salvage, "," if kind == "csv" else "\t")
    else:
        inner = f" ({codec}-compressed, holding neither JSON nor Parquet)" if codec else ""
        raise InputError(f"{file}: unsupported file type {file.suffix!r}{inner}; use {FILE_TYPES}")


def _kind_by_content(file: Path, codec: str | None) -> str | None:
    head = _head(file, codec)
    if head.startswith(b"PAR1"):
        return "parquet"
    return "json" if head.lstrip()[:1] in (b"[", b"{") else None


def _parquet_batches(file: Path, batch_rows: int) -> Iterator[Batch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = 0
    try:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
            yield Batch(batch.to_pylist(), start)
            start += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{file}: not a readable Parquet file ({str(exc).splitlines()[0]}); re-export it") from exc


def _head(file: Path, codec: str | None) -> bytes:
    """The first 4 KiB of `file`'s (decompressed) bytes, without a BOM."""
    try:
        with open_data(file, codec, skip_bom=True) as handle:
            return handle.read(4096)
    except DECOMPRESS_ERRORS as exc:
        raise unreadable(file, codec, exc, "its first bytes", "nothing") from exc


def _first_char(file: Path, codec: str | None) -> str:
    return _head(file, codec).lstrip()[:1].decode("ascii", errors="replace")


def _json_lines(file: Path, codec: str | None, batch_rows: int, salvage: bool) -> Iterator[Batch]:
    rows, skipped, first, offset, number = [], {}, 0, 0, 0
    where = " after decompression" if codec else ""
    try:
        with open_data(file, codec) as handle:
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
                        raise InputError(f"{file}: line {number} (byte {line_offset + exc.start}{where}) is not UTF-8; "
                                         "re-encode the file as UTF-8 (iconv -f LATIN1 -t UTF-8), or pass --salvage to "
                                         "skip such lines") from exc
                    skipped["bad_line"] = skipped.get("bad_line", 0) + 1
                except json.JSONDecodeError as exc:
                    if not salvage:
                        raise InputError(f"{file}: line {number} (column {exc.pos + 1}) is not valid JSON: {exc.msg}; "
                                         "fix or remove the line, or pass --salvage to skip such lines") from exc
                    skipped["bad_line"] = skipped.get("bad_line", 0) + 1
                if len(rows) == batch_rows:
                    yield Batch(rows, first, skipped)
                    rows, skipped, first = [], {}, first + batch_rows
    except DECOMPRESS_ERRORS as exc:
        if not salvage or codec is None:
            raise unreadable(file, codec, exc, f"line {number}", "the complete lines before it") from exc
        skipped["truncated_tail"] = 1
    if rows or skipped:
        yield Batch(rows, first, skipped)


def _rows_key(file: Path, codec: str | None) -> str | None:
    """The key of the list of rows when `file` is one JSON object wrapping them ({"data": [...]}); None when its
    objects are the rows (JSON Lines). Streams the file (the first object, all of it when it wraps the rows)."""
    import ijson

    lists, key, previous = [], None, None
    with open_data(file, codec, skip_bom=True) as handle:
        events = ijson.parse(handle, multiple_values=True, use_float=True)
        try:
            for prefix, event, value in events:
                if prefix == "" and event == "map_key":
                    if value in ROW_FIELDS:
                        return None
                    key = value
                elif prefix == "" and event == "end_map":
                    break
                elif event == "start_map" and previous == (key, "start_array") and prefix == f"{key}.item":
                    lists.append(key)  # a top-level list whose first item is an object
                previous = (prefix, event)
            if next(events, None) is not None:  # a second top-level value: JSON Lines
                return None
        except (ijson.JSONError, UnicodeDecodeError, *DECOMPRESS_ERRORS):
            if not lists:  # the line reader names the line
                return None
    if len(lists) > 1:
        names = ", ".join(repr(k) for k in lists)
        raise InputError(f"{file}: a JSON object with {len(lists)} lists of rows ({names}); keep the one to read, "
                         f"e.g. jq -c '.[\"{lists[0]}\"][]' {file.name} > {lists[0]}.jsonl")
    return lists[0] if lists else None


def _json_array(file: Path, codec: str | None, batch_rows: int, salvage: bool, key: str | None = None) -> Iterator[Batch]:
    """A JSON array of rows (top-level, or under `key` of a top-level object), parsed incrementally (ijson's C
    backend): memory holds one batch."""
    import ijson

    rows, first, count = [], 0, 0
    what = "the JSON array" if key is None else f"the JSON array under {key!r}"
    where = " after decompression" if codec else ""
    with open_data(file, codec, skip_bom=True) as handle:
        items = ijson.items(handle, "item" if key is None else f"{key}.item", use_float=True)
        while True:
            try:
                row = next(items)
            except StopIteration:
                break
            except DECOMPRESS_ERRORS as exc:
                if not salvage or codec is None:
                    raise unreadable(file, codec, exc, f"{count} complete records", f"the {count} complete records") from exc
                yield Batch(rows, first, {"truncated_tail": 1})
                return
            except (ijson.JSONError, UnicodeDecodeError) as exc:
                near = handle.tell()
                try:
                    at_end = not handle.read(1)
                except DECOMPRESS_ERRORS:
                    at_end = True
                truncated = at_end or (isinstance(exc, ijson.IncompleteJSONError) and "premature eof" in str(exc).lower())
                how = "is cut off (truncated)" if truncated else f"has invalid JSON or bytes ({str(exc).splitlines()[0]})"
                if not salvage:
                    raise InputError(f"{file}: {what} {how} after {count} complete records, near byte {near}{where}; "
                                     f"re-export the file, or pass --salvage to keep the {count} complete records") from exc
                yield Batch(rows, first, {"truncated_tail" if truncated else "bad_tail": 1})
                return
            rows.append(row)
            count += 1
            if len(rows) == batch_rows:
                yield Batch(rows, first)
                rows, first = [], first + batch_rows
    if rows:
        yield Batch(rows, first)


def _delimited(file: Path, codec: str | None, batch_rows: int, salvage: bool, delimiter: str) -> Iterator[Batch]:
    """CSV or TSV with a header line, streamed with the csv module; every value is text (a `messages` cell is
    JSON text, parsed with the row)."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a conversation in one cell outgrows the 128 KiB default
    rows, skipped, first, line = [], {}, 0, 0
    try:
        with open_data(file, codec) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
            reader = csv.reader(text, delimiter=delimiter)
            header = next(reader, None)
            try:
                "".join(header or []).encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"{file}: line 1 (the header) is not UTF-8; re-encode the file as UTF-8") from None
            for values in reader:
                line = reader.line_num
                if not values:
                    continue
                problem = None
                if len(values) != len(header):
                    problem = (f"has {len(values)} fields and the header {len(header)}; fix the line (an unclosed quote?)")
                else:
                    try:
                        "".join(values).encode("utf-8")
                    except UnicodeEncodeError:  # surrogates stand for bytes that are not UTF-8
                        problem = "is not UTF-8; re-encode the file as UTF-8 (iconv -f LATIN1 -t UTF-8)"
                if problem:
                    if not salvage:
                        raise InputError(f"{file}: line {line} {problem}, or pass --salvage to skip such lines")
                    skipped["bad_line"] = skipped.get("bad_line", 0) + 1
                    continue
                rows.append(dict(zip(header, values)))
                if len(rows) == batch_rows:
                    yield Batch(rows, first, skipped)
                    rows, skipped, first = [], {}, first + batch_rows
    except csv.Error as exc:
        raise InputError(f"{file}: line {line + 1} is not valid CSV ({exc}); fix the line") from exc
    except DECOMPRESS_ERRORS as exc:
        if not salvage or codec is None:
            raise unreadable(file, codec, exc, f"line {line}", "the complete lines before it") from exc
        skipped["truncated_tail"] = 1
    if rows or skipped:
        yield Batch(rows, first, skipped)


def content_hash(path: Path | str) -> str:
    """sha256 over the bytes and names of the files `path` stands for (input_files: a file, a directory's data
    files, a pattern's matches, every file of a datasets directory), streamed; names are relative to the input."""
    import hashlib

    path = Path(path)
    files = input_files(path)
    root = _root(path, files)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode())
        try:
            with open(file, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        except OSError as exc:
            raise InputError(f"{file}: cannot be read ({exc})") from exc
    return digest.hexdigest()[:16]
