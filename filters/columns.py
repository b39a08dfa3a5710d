"""Filters over any column, meta key or turn text, for users' recipes; and `filter_rows`, the recipe's `filter`
stage, which drops what a filter spec rejects under a reason the user names.

`where` takes a SQL expression over the record's columns, compiled by Polars' own SQL front end (pl.sql_expr), so
users write `judge_score >= 4 AND language = 'EN'` without Python in their recipe, and it runs as a Polars
expression (vectorised, null-safe). Chosen over a hand-written expression language or Python eval: maintained,
documented, and data rather than code.
"""
from __future__ import annotations

import polars as pl

from filters import mark, register


@register
def where(sql: str) -> pl.Expr:
    """Keep rows where the SQL expression over the record's columns is true (null counts as false), e.g.
    `judge_score >= 4 AND deita_score > 2`."""
    if not isinstance(sql, str) or not sql.strip():
        raise TypeError("where takes sql: a SQL expression over the record's columns, e.g. \"judge_score >= 4\"")
    return pl.sql_expr(sql)


@register
def column_at_least(column: str, min_value: float) -> pl.Expr:
    """Keep rows whose numeric `column` is at least `min_value` (null: dropped)."""
    return pl.col(column) >= min_value


@register
def column_at_most(column: str, max_value: float) -> pl.Expr:
    """Keep rows whose numeric `column` is at most `max_value` (null: dropped)."""
    return pl.col(column) <= max_value


def meta_value(key: str) -> pl.Expr:
    """The value at the dotted `key` of the `meta` JSON (e.g. "generated.topic"), as text; null when absent."""
    return pl.col("meta").str.json_path_match("$." + key)


@register
def meta_at_least(key: str, min_value: float) -> pl.Expr:
    """Keep rows whose meta value at the dotted `key` is a number of at least `min_value` (absent: dropped)."""
    return meta_value(key).cast(pl.Float64, strict=False) >= min_value


@register
def meta_in(key: str, values: list) -> pl.Expr:
    """Keep rows whose meta value at the dotted `key` is one of `values` (compared as text)."""
    return meta_value(key).is_in([str(v) for v in values])


@register
def judge_aspect_at_least(aspect: str, min_score: float) -> pl.Expr:
    """Keep rows whose judge score for `aspect` (in `judge_scores`) is at least `min_score` (unscored: dropped)."""
    score = pl.element().filter(pl.element().struct.field("aspect") == aspect).struct.field("score")
    return pl.col("judge_scores").list.eval(score).list.first() >= min_score


def _texts(role: str) -> pl.Expr:
    turns = pl.element() if role == "any" else pl.element().filter(pl.element().struct.field("role") == role)
    return pl.col("messages").list.eval(turns.struct.field("content"))


@register
def text_matches(pattern: str, role: str = "user") -> pl.Expr:
    """Keep rows where a turn of `role` (user, assistant, system, or any) matches the regular expression `pattern`."""
    return _texts(role).list.eval(pl.element().str.contains(pattern)).list.any()


@register
def text_not_matching(pattern: str, role: str = "any") -> pl.Expr:
    """Keep rows where no turn of `role` (user, assistant, system, or any) matches the regular expression `pattern`."""
    return ~_texts(role).list.eval(pl.element().str.contains(pattern)).list.any()


def filter_rows(df: pl.DataFrame, *, spec: list | None = None, where: str | None = None,
                reason: str | None = None) -> pl.DataFrame:
    """Drop the rows the filter `spec` (or the SQL expression `where`) rejects; their drop_reason is `reason`
    when given, else the name of the filter that rejected them (filters.mark)."""
    if (spec is None) == (where is None):
        raise ValueError("filter takes a filter spec (spec: [names or {name, ...}]) or a SQL expression (where: ...), "
                         "exactly one")
    before = df["drop_reason"] if "drop_reason" in df.columns else pl.Series([None] * df.height, dtype=pl.String)
    marked = mark(df, spec if spec is not None else [{"name": "where", "sql": where}])
    if reason:
        newly = marked["drop_reason"].is_not_null() & before.is_null()
        marked = marked.with_columns(pl.when(newly).then(pl.lit(reason)).otherwise(pl.col("drop_reason"))
                                     .alias("drop_reason"))
    return marked
