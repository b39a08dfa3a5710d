"""Filters over Magpie's tags and rewards (the paper's Table 5 building blocks)."""
from __future__ import annotations

import polars as pl

from filters import register

# The ordered levels of Magpie's input_quality and difficulty tags (the tagger's JSON schema uses them too).
QUALITY_LEVELS = ("very poor", "poor", "average", "good", "excellent")
DIFFICULTY_LEVELS = ("very easy", "easy", "medium", "hard", "very hard")


def _at_least(column: str, levels: tuple[str, ...], level: str) -> pl.Expr:
    if level not in levels:
        raise ValueError(f"unknown {column} level {level!r}; valid: {list(levels)}")
    return pl.col(column).is_in(list(levels[levels.index(level):]))


@register
def quality_at_least(level: str = "average") -> pl.Expr:
    """Keep rows whose input_quality is `level` or better (untagged rows are dropped)."""
    return _at_least("input_quality", QUALITY_LEVELS, level)


@register
def difficulty_at_least(level: str = "easy") -> pl.Expr:
    """Keep rows whose difficulty is `level` or harder."""
    return _at_least("difficulty", DIFFICULTY_LEVELS, level)


@register
def quality_in(levels: list[str]) -> pl.Expr:
    """Keep rows whose input_quality is one of `levels`."""
    return pl.col("input_quality").is_in(list(levels))


@register
def reward_above(threshold: float = -12.0) -> pl.Expr:
    """Keep rows with instruct_reward > threshold (paper tau_1 = -12 on the FsfairX RM scale)."""
    return pl.col("instruct_reward") > threshold


@register
def reward_difference_above(threshold: float = 0.0) -> pl.Expr:
    """Keep rows with instruct_reward - base_reward > threshold (paper tau_2 = 0)."""
    return (pl.col("instruct_reward") - pl.col("base_reward")) > threshold
