"""Expected ratings from top-k logprobs: deita's scorer (digits 1-6), the 1-9 judges of rewards, CodecLM and
MCTS. A digit missing from the logprobs gives None, never a default."""
from __future__ import annotations

import math
from typing import Sequence

JUDGE_DIGITS = tuple("123456789")


def expected_rating(top_logprobs: dict[str, float] | None, digits: Sequence[str] = JUDGE_DIGITS) -> float | None:
    """E[rating] under a softmax over the digits' logprobs only; None if any digit is missing.

    >>> expected_rating({d: 0.0 for d in "123456789"})
    5.0
    """
    if not top_logprobs or any(d not in top_logprobs for d in digits):
        return None
    peak = max(top_logprobs[d] for d in digits)
    weights = [math.exp(top_logprobs[d] - peak) for d in digits]
    return sum(int(d) * w for d, w in zip(digits, weights)) / sum(weights)
