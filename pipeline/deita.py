"""deita complexity and quality scores (Liu et al., ICLR 2024; arXiv 2312.15685).

score = sum_k k * softmax(z_k) over the six tokens "1".."6" only (looked up by string among the returned
top-k logprobs), from one batched `generate(max_tokens=1, logprobs=k)` call per shard. A digit missing
from the returned logprobs makes the score null (counted by the stage), never a default value.
Multi-turn conversations are scored per (user, assistant) turn; deita_score = sum_t complexity_t * quality_t.

Two prompt modes: "scorer" (default) sends the exact official prompt as raw text, as the published
hkust-nlp/deita-*-scorer models expect; "judge" puts it in the engine's chat template, the prompt's
body as the user turn and its label line ("##Complexity: ") opening the assistant's reply, for an
instruct model used as a generic judge. On SmolLM2 both give all six digits in the top 20.
"""
from __future__ import annotations

import polars as pl

from pipeline.engines import Engine, Sampling
from pipeline.records import messages_of
from pipeline.reward import expected_rating

VERSION = "1"
# Official strings (hkust-nlp/deita selection/scorer), spacing included: two spaces before "\n##Complexity",
# a space after {output}, a trailing space after each colon.
COMPLEXITY_PROMPT = ("You are a helpful assistant. Please identify the complexity score of the following user query. \n"
                     "##Query: {instruction}  \n##Complexity: ")
QUALITY_PROMPT = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
                  "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
DIGITS = ("1", "2", "3", "4", "5", "6")
MODES = ("scorer", "judge")


def expected_score(top_logprobs: dict[str, float] | None) -> float | None:
    """Expected value of the digit 1..6 under a softmax over the six digits' logprobs; None if any is missing.

    >>> expected_score({d: 0.0 for d in "123456"})
    3.5
    >>> expected_score({"1": -1.0, "2": -1.0})  # digits 3..6 not returned
    """
    return expected_rating(top_logprobs, DIGITS)


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


def _prompt(engine: Engine, text: str, mode: str) -> str:
    if mode == "scorer":
        return text
    # Judge: the prompt's body is the user turn and its last line ("##Complexity: ") opens the assistant's
    # reply, so the next token is the score rather than a preamble.
    body, label = text.rsplit("\n", 1)
    return engine.template.render([{"role": "user", "content": body.rstrip()}], add_generation_prompt=True) + label


def score(df: pl.DataFrame, *, engine: Engine, mode: str = "scorer", top_logprobs: int = 20) -> pl.DataFrame:
    """Add `complexity`, `quality` (per turn) and `deita_score`; one engine call for the whole frame.

    A turn whose digits are not all among the top `top_logprobs` tokens gets a null score, and the row's
    `deita_score` is null; `meta` is untouched (the counts are reported by `score_failures`).
    """
    if mode not in MODES:
        raise ValueError(f"unknown deita mode {mode!r}; valid: {list(MODES)}")
    if df.is_empty():
        return df.with_columns(pl.lit(None, dtype=pl.Float64).alias("deita_score"))
    pairs = [turns(c) for c in messages_of(df)]
    prompts = []
    for conversation in pairs:
        for instruction, output in conversation:
            prompts.append(_prompt(engine, COMPLEXITY_PROMPT.format(instruction=instruction), mode))
            prompts.append(_prompt(engine, QUALITY_PROMPT.format(instruction=instruction, output=output), mode))
    completions = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=1, logprobs=top_logprobs))
    values = iter(expected_score(c[0].logprobs[0] if c[0].logprobs else None) for c in completions)
    complexity, quality, final = [], [], []
    for conversation in pairs:
        c_t, q_t = [], []
        for _ in conversation:
            c_t.append(next(values))
            q_t.append(next(values))
        complexity.append(c_t)
        quality.append(q_t)
        ok = c_t and all(v is not None for v in c_t + q_t)
        final.append(sum(c * q for c, q in zip(c_t, q_t)) if ok else None)
    return df.with_columns(pl.Series("complexity", complexity, dtype=pl.List(pl.Float64)),
                           pl.Series("quality", quality, dtype=pl.List(pl.Float64)),
                           pl.Series("deita_score", final, dtype=pl.Float64))
