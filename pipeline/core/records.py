"""The one record schema every shard is written in, and `conform()`, the only way onto disk."""
from __future__ import annotations

import hashlib
import json

import polars as pl
import pyarrow as pa

# OpenAI / TRL chat format. `content` is the visible text ("" for an assistant turn that only calls tools);
# `reasoning` an assistant's chain of thought kept apart from it (a <think> block or an API's reasoning_content);
# `tool_calls` what an assistant turn calls (arguments as the JSON text the model wrote, as OpenAI's API sends them);
# `tool_call_id` and `name` say which call a tool turn answers. Frames whose messages have role and content only
# are upcast by conform() (the other fields null), so stages that build {"role", "content"} dicts need nothing more.
TOOL_CALL = pa.struct([pa.field("id", pa.string()), pa.field("type", pa.string()),
                       pa.field("function", pa.struct([pa.field("name", pa.string()), pa.field("arguments", pa.string())]))])
MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string()), pa.field("reasoning", pa.string()),
                     pa.field("tool_calls", pa.list_(TOOL_CALL)), pa.field("tool_call_id", pa.string()),
                     pa.field("name", pa.string())])
CONVERSATION = pa.list_(MESSAGE)
ROLES = ("system", "user", "assistant", "tool")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        # The record this one was derived from (a rewrite, a pair built from a conversation).
        pa.field("parent_id", pa.string()),
        # The method that created the record: "magpie", "mcts", "codeclm", "import", ...
        pa.field("source", pa.string(), nullable=False),
        # OpenAI / TRL conversational format.
        pa.field("messages", CONVERSATION),
        pa.field("chosen", CONVERSATION),
        pa.field("rejected", CONVERSATION),
        # The tools a conversation may call: one JSON schema per tool ({"type": "function", "function": {name,
        # description, parameters}}), as JSON text: schemas differ in shape, which an Arrow struct cannot hold, and a
        # list keeps each tool countable and checkable on its own (exports write the one JSON string TRL reads).
        pa.field("tools", pa.list_(pa.string())),
        # deita: per-turn complexity and quality (expected score over "1".."6"), and sum_t c_t * q_t.
        pa.field("complexity", pa.list_(pa.float64())),
        pa.field("quality", pa.list_(pa.float64())),
        pa.field("deita_score", pa.float64()),
        # Instruction-following difficulty s(A|Q)/s(A) (Cherry LLM), first turn.
        pa.field("ifd", pa.float64()),
        # Magpie repetition: squared L2 distance to the nearest other row (unit vectors).
        pa.field("min_neighbor_distance", pa.float64()),
        # Dedup: the id of the earlier kept row this one duplicates.
        pa.field("dup_of", pa.string()),
        # Overlap with a reference set (decontamination): max cosine, and share of word n-grams found there.
        pa.field("ref_similarity", pa.float64()),
        pa.field("ref_ngram_overlap", pa.float64()),
        # The audit (arXiv 2510.18554): max normalized Indel similarity to a reference text, and the reference row
        # nearest in embedding space.
        pa.field("ref_string_similarity", pa.float64()),
        pa.field("ref_nearest", pa.string()),
        # BLEUBERI: sentence BLEU in [0, 1] of the policy model's output against the row's references.
        pa.field("bleu", pa.float64()),
        # Distillation: the share of a problem's sampled answers that were verified correct (its difficulty).
        pa.field("pass_rate", pa.float64()),
        # I-SHEEP: the generating model's own 1-10 ratings of the pair (quality; instruction following).
        pa.field("self_quality", pa.int64()),
        pa.field("self_following", pa.int64()),
        # Magpie tags (LLM tagger) and language; reward-model scores.
        pa.field("input_quality", pa.string()),
        pa.field("difficulty", pa.string()),
        pa.field("task_category", pa.string()),
        pa.field("other_task_categories", pa.list_(pa.string())),
        pa.field("language", pa.string()),
        pa.field("instruct_reward", pa.float64()),
        pa.field("base_reward", pa.float64()),
        # A recipe's judge (pipeline/score/judge.py): a score per named aspect of the user's rubric (pointwise: the
        # expected rating on its scale; pairwise: P(chosen is better)), and the last judge step's mean over its aspects.
        pa.field("judge_scores", pa.list_(pa.struct([pa.field("aspect", pa.string()), pa.field("score", pa.float64())]))),
        pa.field("judge_score", pa.float64()),
        # Unit-norm float32 vector (sentence-transformers or a causal LM's last hidden state).
        pa.field("embedding", pa.list_(pa.float32())),
        # Why the row was dropped (a filter's name, or "engine_error:<kind>"); null in kept shards.
        pa.field("drop_reason", pa.string()),
        # JSON object: provenance (model, engine, sampling, seed, template, finish reasons, ...).
        pa.field("meta", pa.string(), nullable=False),
    ]
)
POLARS_SCHEMA = pl.Schema(pl.from_arrow(SCHEMA.empty_table()).schema)


class RecordError(ValueError):
    """A frame that does not fit the record schema; the message names the place, row and field."""


def record_id(*parts: object) -> str:
    """A stable 16-hex-digit id from the parts that make a record unique.

    >>> record_id("magpie", 7, 0)
    '27bb22a30d2cf548'
    """
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def seed_of(*parts: object) -> int:
    """A stable 32-bit sampling seed from the parts that identify a request.

    >>> seed_of("dpo", "q0") == seed_of("dpo", "q0") != seed_of("dpo", "q1")
    True
    """
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def empty() -> pl.DataFrame:
    """An empty frame in the record schema."""
    return pl.DataFrame(schema=POLARS_SCHEMA)


def conform(df: pl.DataFrame, *, where: str = "frame") -> pa.Table:
    """Check `df` against SCHEMA and return it as an Arrow table in column order.

    Missing nullable columns are added as nulls; unknown columns, nulls in required columns, unknown
    roles and `meta` that is not a JSON object raise RecordError naming `where`, the row and the field.
    """
    unknown = [c for c in df.columns if c not in SCHEMA.names]
    if unknown:
        raise RecordError(
            f"{where}: unknown column(s) {unknown}; the record schema has {SCHEMA.names}. "
            "Put new data in a schema column or a `meta` key (pipeline/records.py)."
        )
    for field in SCHEMA:
        if field.name not in df.columns:
            if not field.nullable:
                raise RecordError(f"{where}: required column {field.name!r} is missing")
            df = df.with_columns(pl.lit(None, dtype=POLARS_SCHEMA[field.name]).alias(field.name))
    df = df.with_columns(_upcast_messages(df, column, where) for column in ("messages", "chosen", "rejected")
                         if df.schema[column] != POLARS_SCHEMA[column])
    try:
        df = df.select(pl.col(name).cast(POLARS_SCHEMA[name], strict=True) for name in SCHEMA.names)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.SchemaError) as exc:
        raise RecordError(f"{where}: a column has the wrong type: {exc}") from exc
    for field in SCHEMA:
        if not field.nullable:
            _first_bad(df, pl.col(field.name).is_null(), where, field.name, "is null")
    _first_bad(df, ~pl.col("meta").str.starts_with("{"), where, "meta", "is not a JSON object")
    for column in ("messages", "chosen", "rejected"):
        bad_role = pl.col(column).list.eval(~pl.element().struct.field("role").is_in(ROLES)).list.any()
        _first_bad(df, bad_role.fill_null(False), where, column, f"has a role outside {ROLES}")
    _first_bad(df, pl.col("id").is_duplicated(), where, "id", "is duplicated")
    return df.to_arrow().cast(SCHEMA)


def _upcast_messages(df: pl.DataFrame, column: str, where: str) -> pl.Expr:
    """`column` with every message struct in MESSAGE's fields: the fields a frame lacks (a stage that builds
    {"role", "content"} dicts) are null; a field MESSAGE does not have is a RecordError."""
    dtype = df.schema[column]
    inner = dtype.inner if isinstance(dtype, pl.List) else None
    if not isinstance(inner, pl.Struct):
        return pl.col(column)  # all-null or empty lists: the strict cast decides
    have = {f.name for f in inner.fields}
    target = POLARS_SCHEMA[column].inner
    unknown = sorted(have - {f.name for f in target.fields})
    if unknown:
        raise RecordError(f"{where}: field {column!r} has message key(s) {unknown}; a message has "
                          f"{[f.name for f in target.fields]}")
    element = pl.element().struct
    return pl.col(column).list.eval(pl.struct(
        [(element.field(f.name) if f.name in have else pl.lit(None)).cast(f.dtype).alias(f.name) for f in target.fields]))


def _first_bad(df: pl.DataFrame, bad: pl.Expr, where: str, field: str, what: str) -> None:
    rows = df.with_row_index("_row").filter(bad).select("_row", "id").head(1)
    if rows.height:
        row, rid = rows.row(0)
        raise RecordError(f"{where}: row {row} (id={rid!r}) field {field!r} {what}")


def meta_dicts(df: pl.DataFrame) -> list[dict]:
    """Decode the `meta` column to dicts (stages merge their provenance into them)."""
    return [json.loads(m) for m in df.get_column("meta").to_list()]


def dump_meta(metas: list[dict]) -> pl.Series:
    """Encode provenance dicts as the `meta` column."""
    return pl.Series("meta", [json.dumps(m, ensure_ascii=False, sort_keys=True, default=str) for m in metas], dtype=pl.String)


def messages_of(df: pl.DataFrame) -> list[list[dict]]:
    """The `messages` column as Python lists of {"role", "content"} dicts."""
    return [list(m or []) for m in df.get_column("messages").to_list()]


def compact(conversation: list[dict] | None) -> list[dict]:
    """A conversation as OpenAI-style dicts without the fields that are null (what an API or a chat template expects).

    >>> compact([{"role": "user", "content": "Hi", "reasoning": None, "tool_calls": None}])
    [{'role': 'user', 'content': 'Hi'}]
    """
    return [{k: v for k, v in m.items() if v is not None} for m in conversation or []]


def first_instruction(messages: pl.Expr = pl.col("messages")) -> pl.Expr:
    """Each row's first user turn ("" when it has none), computed in Polars (no Python dict per message)."""
    user_turns = pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    return messages.list.eval(user_turns).list.first().fill_null("")


def first_instructions(df: pl.DataFrame) -> list[str]:
    """Each row's first user turn ("" when it has none)."""
    return df.select(first_instruction()).to_series().to_list() if df.height else []


def turns(conversation: list[dict]) -> list[tuple[str, str]]:
    """(user, assistant) pairs; a trailing user turn without an answer gets "" (as the official code)."""
    pairs, pending = [], None
    for message in conversation:
        if message["role"] == "user":
            if pending is not None:
                pairs.append((pending, ""))
            pending = message["content"]
        elif message["role"] == "assistant" and pending is not None:
            pairs.append((pending, message["content"]))
            pending = None
    if pending is not None:
        pairs.append((pending, ""))
    return pairs


def first_pairs(df: pl.DataFrame) -> list[tuple[str, str]]:
    """Each row's first (instruction, response); ("", "") for a row without a user turn."""
    return [(turns(c) or [("", "")])[0] for c in messages_of(df)]
