"""Filters over the conversation (`messages`) and the generation provenance in `meta`."""
from __future__ import annotations

import polars as pl

from filters import register


def _turn_text(role: str, which: str = "first") -> pl.Expr:
    texts = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == role).struct.field("content"))
    return getattr(texts.list, which)()


def first_instruction() -> pl.Expr:
    """The first user turn's text."""
    return _turn_text("user")


@register
def instruction_length(min_chars: int = 1, max_chars: int | None = None) -> pl.Expr:
    """Keep rows whose first instruction has between min_chars and max_chars characters (after stripping)."""
    n = first_instruction().str.strip_chars().str.len_chars()
    return (n >= min_chars) & (n <= max_chars if max_chars is not None else pl.lit(True))


@register
def response_length(min_chars: int = 1, max_chars: int | None = None) -> pl.Expr:
    """Keep rows whose every assistant turn has between min_chars and max_chars characters."""
    lengths = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field("content").str.len_chars())
    upper = lengths.list.max() <= max_chars if max_chars is not None else pl.lit(True)
    return (lengths.list.len() > 0) & (lengths.list.min() >= min_chars) & upper


@register
def no_trailing_colon() -> pl.Expr:
    """Keep rows whose user turns do not end with ':' (an incomplete instruction, as the Magpie notebooks drop)."""
    return ~pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
        .str.strip_chars().str.ends_with(":")).list.any()


_TURNS = pl.Struct({"magpie": pl.Struct({"turns": pl.List(pl.Struct(
    {role: pl.Struct({"finish_reason": pl.String}) for role in ("user", "assistant")}))})})


def _finish_reasons(role: str) -> pl.Expr:
    turns = pl.col("meta").str.json_decode(_TURNS).struct.field("magpie").struct.field("turns")
    return turns.list.eval(pl.element().struct.field(role).struct.field("finish_reason"))


@register
def instruction_complete() -> pl.Expr:
    """Keep rows where no generated user turn stopped at the token limit (finish_reason "length")."""
    return ~_finish_reasons("user").list.contains("length").fill_null(False)


@register
def response_complete() -> pl.Expr:
    """Keep rows where no generated assistant turn stopped at the token limit."""
    return ~_finish_reasons("assistant").list.contains("length").fill_null(False)


def folded(text: pl.Expr) -> pl.Expr:
    """Text compared for identity (the unique-instruction filter, exact and MinHash dedup): lower case, runs of
    white space as one space, no leading or trailing space."""
    return text.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


@register
def unique_instruction() -> pl.Expr:
    """Keep the first row of each group of identical first instructions (case and whitespace folded)."""
    return folded(first_instruction()).is_first_distinct()


@register
def not_contaminated(max_similarity: float = 0.95, max_ngram_overlap: float = 0.5) -> pl.Expr:
    """Keep rows below both overlap thresholds with the reference set (rows never compared are kept)."""
    return ((pl.col("ref_similarity").fill_null(-1.0) < max_similarity)
            & (pl.col("ref_ngram_overlap").fill_null(0.0) < max_ngram_overlap))


@register
def self_assessed_at_least(min_score: int = 9) -> pl.Expr:
    """Keep rows the model rated at least `min_score` for both quality and instruction following (I-SHEEP keeps
    scores > 8)."""
    return (pl.col("self_quality") >= min_score) & (pl.col("self_following") >= min_score)


@register
def ifd_at_most(limit: float = 1.0) -> pl.Expr:
    """Keep rows whose IFD is at most `limit` (Cherry drops IFD > 1: the instruction does not help)."""
    return pl.col("ifd") <= limit


@register
def min_neighbor_distance_above(threshold: float = 0.0) -> pl.Expr:
    """Keep rows whose embedding is farther than `threshold` from every other row (Magpie: > 0)."""
    return pl.col("min_neighbor_distance") > threshold


@register
def first_of_repeats() -> pl.Expr:
    """Keep rows that are not a later copy in a near-duplicate group (Magpie's dedup rule)."""
    return pl.col("dup_of").is_null()
