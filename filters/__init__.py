"""Filters: functions returning a Polars expression that is True for rows to keep, registered by name.

A filter spec is a list of names or {"name": ..., **params} dicts, applied in order; a row dropped by
several filters is counted once, under the first; each filter sees only the rows still kept. `apply(df, spec)` returns the kept rows and those
counts; `mark(df, spec)` instead sets `drop_reason` so the run keeps dropped rows for inspection.
"""
from __future__ import annotations

from typing import Callable

import polars as pl

REGISTRY: dict[str, Callable[..., pl.Expr]] = {}


def register(fn: Callable[..., pl.Expr]) -> Callable[..., pl.Expr]:
    REGISTRY[fn.__name__] = fn
    return fn


def _resolve(spec: list) -> list[tuple[str, pl.Expr]]:
    resolved = []
    for item in spec:
        name, params = (item, {}) if isinstance(item, str) else (item["name"], {k: v for k, v in item.items() if k != "name"})
        if name not in REGISTRY:
            raise ValueError(f"unknown filter {name!r}; valid filters: {sorted(REGISTRY)}")
        try:
            resolved.append((name, REGISTRY[name](**params)))
        except TypeError as exc:
            raise ValueError(f"filter {name!r}: bad parameters {params}: {exc}") from exc
    return resolved


def mark(df: pl.DataFrame, spec: list) -> pl.DataFrame:
    """Set `drop_reason` to the name of the first filter each row fails (rows already dropped stay so).

    Filters run in order over the rows still kept, so `unique_instruction` keeps the first *kept* copy.
    Row order is preserved.
    """
    df = df.with_row_index("_order")
    if "drop_reason" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("drop_reason"))
    dropped = [df.filter(pl.col("drop_reason").is_not_null())]
    kept = df.filter(pl.col("drop_reason").is_null())
    for name, keep in _resolve(spec):
        kept = kept.with_columns(keep.fill_null(False).alias("_keep"))
        dropped.append(kept.filter(~pl.col("_keep")).drop("_keep").with_columns(pl.lit(name).alias("drop_reason")))
        kept = kept.filter(pl.col("_keep")).drop("_keep")
    return pl.concat([kept, *dropped]).sort("_order").drop("_order")


def apply(df: pl.DataFrame, spec: list) -> tuple[pl.DataFrame, dict[str, int]]:
    """(kept rows, {filter name: rows it dropped})."""
    marked = mark(df, spec)
    counts = dict(marked.filter(pl.col("drop_reason").is_not_null()).group_by("drop_reason").len().iter_rows())
    return marked.filter(pl.col("drop_reason").is_null()).drop("drop_reason"), counts


from filters import columns, conversation, long_output, magpie, quality, reasoning  # noqa: E402,F401  (registers the built-in filters)

# Instruction filters: what "passes" means for the instruction pass rate.
MAGPIE_INSTRUCTION = [
    "instruction_complete",
    {"name": "instruction_length", "min_chars": 10, "max_chars": 2000},
    "no_trailing_colon",
    "unique_instruction",
]
MAGPIE_BASIC = [*MAGPIE_INSTRUCTION, "response_complete", {"name": "response_length", "min_chars": 1}]
# Long-output SFT data (arXiv 2410.10210): one stated length requirement, met with S_l >= 80.
LONG_OUTPUT = long_output.LONG_OUTPUT
# Text quality before any engine call (curate's first step; Data-Juicer's defaults, see filters/quality.py).
QUALITY = [
    {"name": "instruction_words_at_least", "min_words": 3},
    {"name": "response_words_at_least", "min_words": 1},
    {"name": "word_repetition_at_most", "max_ratio": 0.5, "rep_len": 10},
    {"name": "char_repetition_at_most", "max_ratio": 0.5, "rep_len": 10},
]
