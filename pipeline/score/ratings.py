"""Expected ratings from top-k logprobs: deita's scorer (digits 1-6), the 1-9 judges of rewards, CodecLM and
MCTS. A digit missing from the logprobs gives None, never a default."""
from __future__ import annotations

import math
import re
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


RATED_DIGIT_NOTE = ("the engine returns no logprobs, so ratings are the digit the judge wrote (its first rating digit), "
                    "not the expected rating over the digits' probabilities")


def rating(completion, digits: Sequence[str] = JUDGE_DIGITS, *, first_token: bool = True) -> tuple[float | None, bool]:
    """A judge's rating from its completion, and whether it is the rated digit rather than an expectation.

    With logprobs: the expected rating over the digits at the first generated token (`first_token`: the reply was
    opened up to the digit, as templated engines and prefilling APIs do), else at the last token that is a rating
    digit (a chat API that cannot prefill writes words first, and may repeat the query's own numbers before the
    score: "the complexity of 2+2 is 4"). Without logprobs (an API that has none, such as Anthropic's): the last
    rating digit standing alone in the text, not a denominator ("4/6" is 4), a fallback the stage puts on the record
    (RATED_DIGIT_NOTE). None when neither gives one.

    >>> from pipeline.engines import Completion
    >>> rating(Completion("Score: 4.", "stop", logprobs=[{"Score": 0.0}, {":": 0.0}, {"4": 0.0, " 5": 0.0}, {".": 0.0}]),
    ...        "45", first_token=False)
    (4.5, False)
    >>> rating(Completion("The complexity of 2+2 is 4/6.", "stop")), rating(Completion("Rated 12 of 20", "stop"))
    ((4.0, True), (None, True))
    """
    if completion.failed:
        return None, False
    if completion.logprobs:
        if first_token:  # the reference's lookup: the digits' own tokens at the opened reply's first position
            return expected_rating(completion.logprobs[0], digits), False
        for step in reversed(completion.logprobs):
            if step and max(step, key=step.get).strip() in digits:
                merged: dict[str, float] = {}
                for token, logprob in step.items():
                    if token.strip() in digits:  # after words, " 4" and "4" are the same rating
                        key = token.strip()
                        merged[key] = logprob if key not in merged else math.log(math.exp(merged[key]) + math.exp(logprob))
                return expected_rating(merged, digits), False
        return None, False
    found = [m.group(1) for m in re.finditer(r"(?<![\d/.])(\d)(?![\d]|[.,]\d)", completion.text or "")
             if m.group(1) in digits]
    return (float(found[-1]) if found else None), True
