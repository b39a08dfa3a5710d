"""Trace-quality filters for reasoning data (the failure modes DeepSeek-R1's report names for its distillation data:
language mixing, repetition, unreadable traces): a think block left open, a reasoning trace that repeats itself, and a
reply that mixes writing systems. They read the assistant turns' `reasoning` (and `content` where said); the other
filters read `content` only, so a long trace never counts against a response's length or repetition.
"""
from __future__ import annotations

import polars as pl

from filters import register
from filters.quality import repetition_ratio

# The trace filters distillation runs (pipeline.recipes.reasoning): no open think block, little repetition, one script.
REASONING = ["think_closed", {"name": "reasoning_repetition_at_most", "max_ratio": 0.3, "rep_len": 10},
             {"name": "single_script", "min_share": 0.95}]
# Writing systems counted for language mixing; Han and kana are one group (Japanese writes both).
SCRIPTS = {"latin": r"\p{Latin}", "cjk": r"[\p{Han}\p{Hiragana}\p{Katakana}]", "hangul": r"\p{Hangul}",
           "cyrillic": r"\p{Cyrillic}", "arabic": r"\p{Arabic}", "devanagari": r"\p{Devanagari}", "thai": r"\p{Thai}",
           "hebrew": r"\p{Hebrew}"}


def _assistant(field: str) -> pl.Expr:
    turns = pl.element().filter(pl.element().struct.field("role") == "assistant")
    return pl.col("messages").list.eval(turns.struct.field(field).fill_null("")).list.join("\n")


def reasoning_text() -> pl.Expr:
    """Every assistant turn's reasoning, one turn per line ("" when there is none)."""
    return _assistant("reasoning")


@register
def think_closed(open_tag: str = "<think>", close_tag: str = "</think>") -> pl.Expr:
    """Keep rows whose assistant turns leave no reasoning block open or stray: the tags balance in the content, and the
    reasoning (already split out) holds none."""
    content, reasoning = _assistant("content"), reasoning_text()
    balanced = content.str.count_matches(open_tag, literal=True) == content.str.count_matches(close_tag, literal=True)
    return balanced & ~reasoning.str.contains(open_tag, literal=True) & ~reasoning.str.contains(close_tag, literal=True)


@register
def reasoning_repetition_at_most(max_ratio: float = 0.3, rep_len: int = 10) -> pl.Expr:
    """Keep rows whose reasoning repeats at most `max_ratio` of its word `rep_len`-grams (a looping trace; 0.3 is
    stricter than the 0.5 for responses: a correct trace that loops still teaches looping)."""
    return repetition_ratio(reasoning_text(), unit="word", n=rep_len) <= max_ratio


@register
def single_script(min_share: float = 0.95, field: str = "both") -> pl.Expr:
    """Keep rows whose assistant text (`reasoning`, `content` or `both`) writes at least `min_share` of its letters in one
    writing system (Latin, CJK, Hangul, Cyrillic, ...): R1-style traces that drift from English into Chinese fail it.
    A text without letters passes."""
    if field not in ("reasoning", "content", "both"):
        raise ValueError(f"field must be reasoning, content or both; got {field!r}")
    text = reasoning_text() if field == "reasoning" else _assistant("content") if field == "content" else \
        pl.concat_str([reasoning_text(), _assistant("content")], separator="\n")
    counts = [text.str.count_matches(pattern) for pattern in SCRIPTS.values()]
    total = pl.sum_horizontal(counts)
    return (total == 0) | (pl.max_horizontal(counts) >= min_share * total)
