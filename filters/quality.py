"""Cheap text-quality filters, run before any model is called (curate's first step).

After Data-Juicer's `words_num_filter`, `word_repetition_filter` and `character_repetition_filter` (its
definitions and defaults: n-grams of 10, at most half repeated), written as Polars expressions so they run
vectorised over a shard. Data-Juicer's are the reference because they are defined per sample of instruction
data (datatrove's Gopher filters are tuned for web documents: a minimum of 50 words drops most instructions).
Language-identification confidence is not among the defaults: measured with lingua on short English
instructions it is too low to separate them from junk ("How do I boil an egg?" 0.09, "thx" 0.48).
"""
from __future__ import annotations

import polars as pl

from filters import register
from filters.conversation import first_instruction


def _words(text: pl.Expr) -> pl.Expr:
    return text.str.extract_all(r"\S+")


def conversation_text() -> pl.Expr:
    """Every turn's text, one turn per line."""
    return pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n")


def repetition_ratio(text: pl.Expr, *, unit: str = "word", n: int = 10) -> pl.Expr:
    """Data-Juicer's repetition ratios. word: the share of word n-grams that occur more than once. char: the
    share of all character n-grams taken by the √K most frequent of the K distinct ones (only repeated ones
    count). 0 for a text shorter than n."""
    tokens = _words(text) if unit == "word" else text.str.extract_all(r"(?s).")
    grams = tokens.list.eval(pl.concat_str([pl.element().shift(-i) for i in range(n)],
                                           separator=" " if unit == "word" else "").drop_nulls())
    if unit == "word":
        ratio = grams.list.eval(pl.element().is_duplicated().mean())
    else:
        counts = grams.list.eval(pl.element().value_counts(sort=True).struct.field("count"))
        top = pl.min_horizontal(pl.len().sqrt().floor(), (pl.element() > 1).sum()).cast(pl.UInt32)
        ratio = counts.list.eval(pl.element().head(top).sum() / pl.element().sum())
    return ratio.list.first().fill_nan(0.0).fill_null(0.0)


@register
def instruction_words_at_least(min_words: int = 3) -> pl.Expr:
    """Keep rows whose first instruction has at least `min_words` words ("ok", "lol", "asdf" have one)."""
    return _words(first_instruction()).list.len() >= min_words


@register
def response_words_at_least(min_words: int = 1) -> pl.Expr:
    """Keep rows whose every assistant turn has at least `min_words` words."""
    counts = pl.col("messages").list.eval(pl.element().filter(pl.element().struct.field("role") == "assistant")
                                          .struct.field("content").str.extract_all(r"\S+").list.len())
    return counts.list.min().fill_null(min_words) >= min_words


@register
def word_repetition_at_most(max_ratio: float = 0.5, rep_len: int = 10) -> pl.Expr:
    """Keep rows whose conversation repeats at most `max_ratio` of its word `rep_len`-grams (a looping model)."""
    return repetition_ratio(conversation_text(), unit="word", n=rep_len) <= max_ratio


@register
def char_repetition_at_most(max_ratio: float = 0.5, rep_len: int = 10) -> pl.Expr:
    """Keep rows whose conversation's most frequent character `rep_len`-grams cover at most `max_ratio` of them."""
    return repetition_ratio(conversation_text(), unit="char", n=rep_len) <= max_ratio
