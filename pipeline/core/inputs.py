"""Bring your own data: read Parquet, JSON/JSONL or an HF `datasets` directory in OpenAI `messages`,
ShareGPT (`conversations` of {from, value}), Alpaca (`instruction`, `input`, `output`) or seed
(`instruction` alone, e.g. for MCTS and CodecLM) form, and turn it into records. A `category` column is
kept in `meta`. Errors name the file, the row and the field, and say what was expected.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.core.records import dump_meta, empty, record_id

FORMATS = ("messages", "sharegpt", "alpaca", "instructions")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "system": "system"}


class InputError(ValueError):
    """Input data that cannot be turned into records."""


def read_table(path: Path) -> pl.DataFrame:
    """A Parquet file, a JSON/JSONL file, a directory of Parquet files, or an HF datasets save_to_disk directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            from datasets import load_from_disk

            data = load_from_disk(str(path))
            if hasattr(data, "keys"):  # a DatasetDict: the train split, or the first
                data = data["train"] if "train" in data else data[next(iter(data.keys()))]
            return pl.from_arrow(data.data.table)
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise InputError(f"{path}: a directory with no .parquet files and no datasets dataset_info.json")
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}: line {number + 1} is not valid JSON: {exc.msg}") from exc
        return pl.DataFrame(rows, infer_schema_length=None)
    if path.suffix == ".json":
        return pl.DataFrame(json.loads(path.read_text()), infer_schema_length=None)
    raise InputError(f"{path}: unsupported file type {path.suffix!r}; use .parquet, .jsonl, .json or a datasets directory")


def detect_format(df: pl.DataFrame, path: Path | str = "input") -> str:
    if "messages" in df.columns:
        return "messages"
    if "conversations" in df.columns:
        return "sharegpt"
    if "instruction" in df.columns and "output" in df.columns:
        return "alpaca"
    if "instruction" in df.columns:
        return "instructions"
    raise InputError(f"{path}: cannot tell the format from columns {df.columns}; expected `messages` (OpenAI), "
                       "`conversations` (ShareGPT), `instruction` + `output` (Alpaca) or `instruction` (seeds)")


def _conversation(row: dict, fmt: str, where: str) -> list[dict]:
    if fmt == "instructions":
        if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise InputError(f"{where} field 'instruction': expected a non-empty string")
        return [{"role": "user", "content": row["instruction"]}]
    if fmt == "alpaca":
        instruction, extra = row.get("instruction"), row.get("input")
        if not isinstance(instruction, str) or not isinstance(row.get("output"), str):
            raise InputError(f"{where} field 'instruction'/'output': expected strings")
        user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    field = "messages" if fmt == "messages" else "conversations"
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{where} field {field!r}: expected a non-empty list of turns")
    conversation = []
    for i, turn in enumerate(turns):
        if fmt == "messages":
            role, content = (turn or {}).get("role"), (turn or {}).get("content")
            if role not in ("system", "user", "assistant", "tool"):
                raise InputError(f"{where} field 'messages[{i}].role': {role!r} is not system, user, assistant or tool")
        else:
            speaker, content = (turn or {}).get("from"), (turn or {}).get("value")
            role = SHAREGPT_ROLES.get(str(speaker).lower())
            if role is None:
                raise InputError(f"{where} field 'conversations[{i}].from': {speaker!r} is not one of {sorted(SHAREGPT_ROLES)}")
        if not isinstance(content, str):
            raise InputError(f"{where} field '{field}[{i}]': the text is missing or not a string")
        conversation.append({"role": role, "content": content})
    return conversation


def to_records(df: pl.DataFrame, *, path: Path | str = "input", fmt: str | None = None) -> pl.DataFrame:
    """Records from a table in one of FORMATS (detected when `fmt` is None); keeps an `id` column if present."""
    fmt = fmt or detect_format(df, path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {list(FORMATS)}")
    name = Path(path).name
    conversations, ids, metas = [], [], []
    for number, row in enumerate(df.iter_rows(named=True)):
        conversations.append(_conversation(row, fmt, f"{path}: row {number}"))
        ids.append(str(row["id"]) if row.get("id") is not None else record_id("import", name, number))
        meta = {"import": {"file": name, "row": number, "format": fmt}}
        if isinstance(row.get("category"), str):
            meta["category"] = row["category"]
        metas.append(meta)
    if len(set(ids)) != len(ids):
        seen = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise InputError(f"{path}: field 'id' has the duplicate value {duplicate!r}; ids must be unique")
    frame = pl.DataFrame({"id": ids, "source": ["import"] * len(ids), "messages": conversations},
                         schema_overrides={"messages": empty().schema["messages"], "id": pl.String})
    return frame.with_columns(dump_meta(metas))


def load(path: Path | str, fmt: str | None = None) -> pl.DataFrame:
    """Read `path` and return records."""
    return to_records(read_table(Path(path)), path=path, fmt=fmt)
