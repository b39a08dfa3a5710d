"""BLEUBERI's selection (arXiv 2505.11080, create_training_data.py): of the prompts the policy answers worst by BLEU
(`hard`, the paper's choice), best (`easy`), around the median (`medium`), or at random (`random`), keep k."""
from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.select.selection import keep_scored_in_order

MODES = ("hard", "easy", "medium", "random")


def order(scores: np.ndarray, *, k: int, mode: str, seed: int = 0) -> np.ndarray:
    """Indices of the k rows a mode keeps, in selection order (ties keep row order).

    >>> order(np.array([0.5, 0.1, 0.9, 0.3, 0.7]), k=2, mode="hard").tolist()
    [1, 3]
    >>> order(np.array([0.5, 0.1, 0.9, 0.3, 0.7]), k=3, mode="medium").tolist()
    [3, 0, 4]
    """
    if mode not in MODES:
        raise ValueError(f"unknown BLEUBERI mode {mode!r}; valid: {list(MODES)}")
    ascending = np.argsort(scores, kind="stable")
    if mode == "hard":
        return ascending[:k]
    if mode == "easy":
        return np.argsort(-scores, kind="stable")[:k]
    if mode == "medium":
        start = max(0, (len(scores) - k) // 2)
        return ascending[start:start + k]
    return np.random.default_rng(seed).permutation(len(scores))[:k]


def select(df: pl.DataFrame, *, k: int, mode: str = "hard", seed: int = 0) -> pl.DataFrame:
    """Stage: keep the `mode`'s k rows by `bleu`; rows without a BLEU are counted as null_score, never selected."""
    return keep_scored_in_order(df, "bleu", lambda scored: order(scored["bleu"].to_numpy(), k=k, mode=mode, seed=seed))
