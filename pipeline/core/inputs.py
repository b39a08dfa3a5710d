"""Bring your own data: read what users have — Parquet, JSON Lines, JSON (an array of rows, or one object
wrapping them: `{"data": [...]}`), CSV/TSV, an HF `datasets` directory, a directory or glob pattern of such files,
any of them compressed (gzip, zstd, bzip2, xz: known by their first bytes, whatever the name says) — in OpenAI
`messages`, ShareGPT (`conversations` of {from, value}), Alpaca (`instruction`, `input`, `output`), seed
(`instruction` alone), xLAM (`query`, `answers`, `tools`) or problem (`problem` or `question`, gold in meta.fields) form, in batches of bounded size, and turn each row into a record or a quarantined row;
`write_input` writes them as a run's input stage.

Rows: a row that cannot become a valid conversation is quarantined with a `drop_reason` (QUARANTINE_REASONS),
its raw text kept in `meta.import.raw`; `strict=True` stops at the first one instead. A conversation stored as JSON
text (a common Parquet/CSV export) is parsed; each turn is read as {role, content} or {from, value}, whichever
keys it has, under either field name. Leading assistant turns (long chats exported in parts open with the
assistant) are removed and counted, as FastChat's ShareGPT preprocessing does; a conversation left without a user
turn is quarantined.

Files and their errors: pipeline.core.readers.
"""
from __future__ import annotations

import contextvars
import json
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.core.codehash import code_hash
from pipeline.core.messages import BadToolCall, split_reasoning, tool_calls, tools_column
from pipeline.core.readers import BATCH_ROWS, Batch, InputError, content_hash, read_batches  # noqa: F401 (re-exported)
from pipeline.core.records import dump_meta, empty, record_id
from pipeline.core.rundir import append_manifest, check_identity, file_record, write_shard

FORMATS = ("messages", "sharegpt", "alpaca", "instructions", "xlam", "problems")
# The fields a format makes the conversation from; a row's other fields are kept in meta.fields (e.g. the references
# BLEUBERI scores against), except what has a place of its own (id, category).
CONSUMED = {"messages": {"messages", "tools"}, "sharegpt": {"conversations", "tools"},
            "alpaca": {"instruction", "input", "output"}, "instructions": {"instruction", "input", "output"},
            "xlam": {"query", "answers", "tools"}, "problems": {"problem", "question"}}
OWN_PLACE = {"id", "category", "source", "meta"}
RAW_CHARS = 2_000  # of a quarantined row's raw JSON kept in meta
# Roles of real exports: ShareGPT (human, gpt, chatgpt, bing, bard), Gemini (model), LLaMA-Factory and glaive
# (function_call: an assistant turn whose text is the call(s); observation / function: a tool result).
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system", "tool": "tool",
         "observation": "tool", "function": "tool", "function_call": "assistant"}
QUARANTINE_REASONS = ("not_an_object", "empty_conversation", "not_a_list", "not_text", "empty_turn", "no_user_turn",
                      "unknown_role:<name>", "missing_field:<name>", "duplicate_id", "bad_line", "bad_tool_call", "bad_tools")
# File kinds by name (after the compression suffix); a directory reads files of one family only.


# `aligndata plan` runs a job on its first rows only: set, the source of a job (its input, Magpie's plan) is cut to it.
SAMPLE_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar("aligndata_sample_rows", default=None)


class BadRow(ValueError):
    """One row that cannot become a record: `reason` is its drop_reason, the message says where and why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


# ---- rows to records -------------------------------------------------------------------------------------

def detect_format(keys: set[str], path: Path | str = "input") -> str:
    if "query" in keys and "answers" in keys:
        return "xlam"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "instruction" in keys:
        return "instructions"
    if "problem" in keys or "question" in keys:  # problems with gold answers (distill): the rest stays in meta.fields
        return "problems"
    raise InputError(f"{path}: cannot tell the format from columns {sorted(keys)}; expected `messages` (OpenAI), "
                     "`conversations` (ShareGPT), `instruction` + `output` (Alpaca), `instruction` (seeds), `query` + "
                     "`answers` (xLAM) or `problem` / `question` (problems)")


def conversation(row: object, fmt: str) -> tuple[list[dict], int]:
    """The row's conversation and how many leading assistant turns were removed; BadRow when it has none."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    if fmt == "xlam":  # APIGen / xLAM: a query, the calls that answer it (JSON text), the tools
        query = row.get("query")
        if not isinstance(query, str) or not query.strip():
            raise BadRow("not_text" if "query" in row else "missing_field:query", "field 'query': expected a non-empty string")
        calls = _calls(row.get("answers"), "answers", ids=(json.dumps(row, sort_keys=True, default=str),))
        return [{"role": "user", "content": query}, {"role": "assistant", "content": "", "tool_calls": calls}], 0
    if fmt == "problems":
        field = "problem" if "problem" in row else "question"
        text = row.get(field)
        if not isinstance(text, str) or not text.strip():
            raise BadRow("not_text" if field in row else "missing_field:problem", f"field {field!r}: expected a non-empty string")
        return [{"role": "user", "content": text}], 0
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
    name, keys = ("messages", ("role", "content")) if fmt == "messages" else ("conversations", ("from", "value"))
    other = ("from", "value") if fmt == "messages" else ("role", "content")
    turns = row.get(name)
    if isinstance(turns, str) and turns.lstrip().startswith("["):  # a conversation stored as JSON text
        try:
            turns = json.loads(turns)
        except ValueError:
            pass
    if turns is None or turns == []:
        raise BadRow("empty_conversation", f"field {name!r} is empty")
    if not isinstance(turns, list):
        raise BadRow("not_a_list", f"field {name!r}: expected a list of turns, got {type(turns).__name__}")
    messages, pending = [], []  # pending: calls of the last assistant turn that no tool turn has answered yet
    for i, turn in enumerate(turns):
        turn = turn if isinstance(turn, dict) else {}
        # each turn in OpenAI {role, content} or ShareGPT {from, value} keys, whichever it has (the format's when both)
        uses_other = not (keys[0] in turn or keys[1] in turn) and (other[0] in turn or other[1] in turn)
        role_key, text_key = other if uses_other else keys
        speaker, content = turn.get(role_key), turn.get(text_key)
        role = ROLES.get(str(speaker).lower())
        if role is None:
            raise BadRow(f"unknown_role:{str(speaker)[:40]}", f"field '{name}[{i}].{role_key}': {speaker!r} is not one of {sorted(ROLES)}")
        message: dict = {"role": role}
        if str(speaker).lower() == "function_call":  # LLaMA-Factory / glaive: the turn's text is the call(s) as JSON
            message |= {"content": "", "tool_calls": _calls(content, f"{name}[{i}].{text_key}", ids=(json.dumps(turns, default=str), i))}
            content = ""
        elif turn.get("tool_calls"):
            message["tool_calls"] = _calls(turn["tool_calls"], f"{name}[{i}].tool_calls", ids=(json.dumps(turns, default=str), i))
            content = content if isinstance(content, str) else ""  # OpenAI: null content beside calls
        if not isinstance(content, str):
            raise BadRow("not_text", f"field '{name}[{i}].{text_key}': the text is missing or not a string")
        if not content.strip() and not message.get("tool_calls"):
            raise BadRow("empty_turn", f"field '{name}[{i}].{text_key}' is empty")
        if role == "assistant":
            reasoning = turn.get("reasoning_content", turn.get("reasoning"))
            if isinstance(reasoning, str) and reasoning.strip():
                message["reasoning"] = reasoning.strip()
            else:  # a reasoning model's reply with its <think> block inline
                message["reasoning"], content = split_reasoning(content)
            pending = [c["id"] for c in message.get("tool_calls", [])]
        if role == "tool":  # the answer to the next unanswered call when the export does not say which
            message["tool_call_id"] = turn.get("tool_call_id") or (pending.pop(0) if pending else None)
            message["name"] = turn.get("name")
        message["content"] = content
        messages.append(message)
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    leading = next((i for i, m in enumerate(rest) if m["role"] != "assistant"), len(rest))
    messages = system + rest[leading:]
    if not any(m["role"] == "user" for m in messages):
        raise BadRow("no_user_turn", f"field {name!r} has no user turn")
    return messages, leading


def _calls(value, field: str, *, ids: tuple) -> list[dict]:
    """OpenAI tool calls from any export's shape (pipeline.core.messages.tool_calls); BadRow naming `field` if unreadable."""
    try:
        return tool_calls(value, ids=ids)
    except BadToolCall as exc:
        raise BadRow(exc.reason, f"field '{field}': {exc}") from None


@dataclass
class Converted:
    """One batch as records: `kept` and `quarantined` frames, and the turns removed by repairs."""

    kept: pl.DataFrame
    quarantined: pl.DataFrame
    leading_assistant_turns_removed: int


def to_records(batch: Batch, *, path: Path | str, fmt: str, seen_ids: set[str], strict: bool = False) -> Converted:
    """Records from one batch in format `fmt`; bad rows quarantined (or, with `strict`, an InputError).

    A row's id is its `id` field (an empty one counts as none) or a hash of the input's name and its row number
    across the input; meta.import names the file and the row in it."""
    name = Path(path).name
    where, file_name = batch.file or path, batch.file_name or name
    kept = {"id": [], "messages": [], "tools": [], "meta": []}
    bad = {"id": [], "meta": [], "drop_reason": []}
    removed = 0
    for offset, row in enumerate(batch.rows):
        number = batch.first_row + offset
        in_file = batch.file_row + offset if batch.file else number
        given = row.get("id") if isinstance(row, dict) else None
        rid = str(given) if given not in (None, "") else record_id("import", name, number)
        meta = {"import": {"file": file_name, "row": in_file, "format": fmt}}
        try:
            if rid in seen_ids:
                raise BadRow("duplicate_id", f"field 'id' has the duplicate value {rid!r}; ids must be unique")
            messages, leading = conversation(row, fmt)
            try:
                tools = tools_column(row.get("tools")) if "tools" in CONSUMED[fmt] else None
            except BadToolCall as exc:
                raise BadRow(exc.reason, f"field 'tools': {exc}") from None
        except BadRow as exc:
            if strict:
                raise InputError(f"{where}: row {in_file} {exc} (drop_reason {exc.reason}); fix the row, or run without "
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
        kept["tools"].append(tools)
        kept["meta"].append(meta)
    schema = empty().schema
    kept_frame = pl.DataFrame({"id": kept["id"], "source": ["import"] * len(kept["id"]), "messages": kept["messages"],
                               "tools": kept["tools"]},
                              schema={"id": pl.String, "source": pl.String, "messages": schema["messages"],
                                      "tools": schema["tools"]})
    bad_frame = pl.DataFrame({"id": bad["id"], "source": ["import"] * len(bad["id"]), "drop_reason": bad["drop_reason"]},
                             schema={"id": pl.String, "source": pl.String, "drop_reason": pl.String})
    return Converted(kept_frame.with_columns(dump_meta(kept["meta"])), bad_frame.with_columns(dump_meta(bad["meta"])), removed)


def records_batch(batch: Batch, *, path: Path | str, seen_ids: set[str], strict: bool = False) -> Converted:
    """aligndata records (a run's export, a stage directory, a table with `id`, `source` and `meta`) from one batch,
    every column kept; rows that are not objects, repeat an id or hold no valid conversation are quarantined as in
    `to_records` (or, with `strict`, an InputError)."""
    name = Path(path).name
    kept, bad = [], {"id": [], "meta": [], "drop_reason": []}
    for offset, row in enumerate(batch.rows):
        number = batch.first_row + offset
        try:
            if not isinstance(row, dict):
                raise BadRow("not_an_object", f"expected a JSON object, got {type(row).__name__}")
            if str(row.get("id")) in seen_ids:
                raise BadRow("duplicate_id", f"field 'id' has the duplicate value {row.get('id')!r}; ids must be unique")
            messages, _ = conversation({"messages": row.get("messages")}, "messages")
        except BadRow as exc:
            if strict:
                raise InputError(f"{batch.file or path}: row {number} {exc} (drop_reason {exc.reason}); fix the row, or "
                                 "run without --strict to quarantine such rows") from exc
            bad["id"].append(record_id("quarantined", name, number))
            bad["meta"].append({"import": {"file": batch.file_name or name, "row": number, "format": "records",
                                           "raw": json.dumps(row, ensure_ascii=False, default=str)[:RAW_CHARS]}})
            bad["drop_reason"].append(exc.reason)
            continue
        seen_ids.add(str(row.get("id")))
        kept.append({**row, "messages": messages})
    frame = pl.from_dicts(kept, infer_schema_length=None).drop("drop_reason", strict=False) if kept else empty()
    bad_frame = pl.DataFrame({"id": bad["id"], "source": ["import"] * len(bad["id"]), "drop_reason": bad["drop_reason"]},
                             schema={"id": pl.String, "source": pl.String, "drop_reason": pl.String})
    return Converted(frame, bad_frame.with_columns(dump_meta(bad["meta"])), 0)


def write_input(out: Path, path: Path, fmt: str | None = None, *, strict: bool = False, salvage: bool = False) -> Path:
    """DIR/input/: the input as record shards of up to BATCH_ROWS rows, read in batches (bounded memory).

    Rows that cannot become records go to input/dropped-*.parquet with their reason, counted in the manifest
    (`strict` stops at the first instead). Records written by aligndata (a run's export or a stage directory,
    whose dropped rows are never read) keep all their columns. input/stage.json records the content
    hash of every file read and the options: another input on the same run directory is refused; a re-run writes
    only missing shards.
    """
    path, input_dir = Path(path), Path(out) / "input"
    check_identity(input_dir, {"stage": "input", "code": code_hash(to_records), "file": path.name, "content": content_hash(path),
                               "format": fmt, "strict": strict, "salvage": salvage})
    seen: set[str] = set()  # ids across batches: every batch is converted, also on resume, to find duplicates
    index, kept_rows, first_keys, reasons = -1, 0, None, {}
    sample = SAMPLE_ROWS.get()
    for index, batch in enumerate(read_batches(path, salvage=salvage)):
        if sample is not None:  # a plan's sample: the first rows only
            if sample <= 0:
                break
            batch.rows, sample = batch.rows[:sample], sample - len(batch.rows[:sample])
        started = time.perf_counter()
        keys = keys_of(batch.rows)
        first_keys = first_keys if first_keys is not None else (sorted(keys) if batch.rows else None)
        if {"id", "source", "meta"} <= keys:  # aligndata records
            converted = records_batch(batch, path=path, seen_ids=seen, strict=strict)
        else:
            fmt = fmt or (detect_format(keys, batch.file or path) if batch.rows else None)  # salvage may leave none
            converted = to_records(batch, path=path, fmt=fmt, seen_ids=seen, strict=strict)
        quarantined = converted.quarantined
        drops = dict(sorted(quarantined.group_by("drop_reason").len().iter_rows())) if quarantined.height else {}
        kept_rows += converted.kept.height
        reasons = {k: reasons.get(k, 0) + drops.get(k, 0) for k in {*reasons, *drops}}
        shard = input_dir / f"shard-{index:05d}.parquet"
        if shard.exists():
            continue
        # rundir's write order: the dropped rows (an empty file when none), then the shard, its manifest line before
        # the rename, so a crash anywhere leaves no stale dropped rows beside a finished shard
        write_shard(quarantined, input_dir / f"dropped-{index:05d}.parquet")
        removed = converted.leading_assistant_turns_removed
        entry = {"stage": "input", "shard": index, "status": "done", "file": str(path),
                 "rows_in": len(batch.rows) + sum(batch.skipped.values()), "rows_out": converted.kept.height,
                 "drops": drops | batch.skipped, "nulls": {}, "seconds": round(time.perf_counter() - started, 3),
                 "repairs": {"leading_assistant_turns_removed": removed} if removed else {}}
        write_shard(converted.kept, shard, before_rename=lambda tmp: append_manifest(out, {**entry, **file_record(tmp)}))
    if index < 0:
        raise InputError(f"{path}: no rows; nothing to do")
    if not kept_rows and reasons:
        fields = sorted(CONSUMED.get(fmt or "", ()))
        raise InputError(f"{path}: every row was quarantined as {fmt} ({reasons}); that format reads {fields}, the first "
                         f"row has {first_keys}: pass the --format that matches, or drop --format to detect it")
    return input_dir


def load(path: Path | str, fmt: str | None = None, *, strict: bool = True) -> pl.DataFrame:
    """All of `path` as records in memory (small files: reference sets, tests); strict by default."""
    frames, seen = [], set()
    for batch in read_batches(Path(path)):
        fmt = fmt or detect_format(keys_of(batch.rows), batch.file or path)
        frames.append(to_records(batch, path=path, fmt=fmt, seen_ids=seen, strict=strict).kept)
    return pl.concat(frames) if frames else empty().select("id", "source", "messages", "tools", "meta")


def keys_of(rows: list) -> set[str]:
    """The columns of a batch (the keys of its first 1000 object rows)."""
    return set().union(*(row.keys() for row in rows[:1000] if isinstance(row, dict)))
