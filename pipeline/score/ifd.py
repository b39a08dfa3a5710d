"""Instruction-Following Difficulty (Li et al., Cherry LLM; arXiv 2308.12032): IFD = s(A|Q) / s(A), the
answer's mean token loss with the instruction over without it. IFD > 1 means the instruction does not
help predict the answer (a misaligned pair); higher IFD below 1 marks harder, more useful samples.

From `engine.prompt_logprobs` in one batched call per shard: the answer's tokens are those the full text
has beyond its prefix (conditioned: the chat-template rendering of Q; unconditioned: Cherry's
"### Response:" header).
"""
from __future__ import annotations

import polars as pl

from pipeline.engines import ENGINE_ERROR, Engine, raw_text_template
from pipeline.core.records import first_pairs

RESPONSE_HEADER = "### Response:"


def _answer_loss(full: list[float] | None, prefix: list[float] | None) -> float | None:
    if full is None or prefix is None:
        return None
    n_answer = len(full) - len(prefix)
    if n_answer <= 0:
        return None
    return -sum(full[-n_answer:]) / n_answer


def score(df: pl.DataFrame, *, engine: Engine) -> pl.DataFrame:
    """Add `ifd` for each row's first (instruction, answer) turn; null where it cannot be computed (no answer).
    A row whose prompt logprobs did not come back (a failed or over-length request) is engine_error:prompt_logprobs."""
    if df.is_empty():
        return df.with_columns(pl.lit(None, dtype=pl.Float64).alias("ifd"))
    firsts = first_pairs(df)
    template = raw_text_template(engine, "IFD's prompt logprobs")
    prompts = []
    for question, answer in firsts:
        conditioned = template.prompt(question)
        prompts += [conditioned + answer, conditioned, RESPONSE_HEADER + answer, RESPONSE_HEADER]
    logprobs = engine.prompt_logprobs(prompts)
    values, failures = [], []
    for i, (_, answer) in enumerate(firsts):
        full_c, pre_c, full_u, pre_u = logprobs[4 * i:4 * i + 4]
        failed = any(lp is None for lp in (full_c, pre_c, full_u, pre_u))
        failures.append(f"{ENGINE_ERROR}prompt_logprobs" if failed else None)
        conditioned, alone = _answer_loss(full_c, pre_c), _answer_loss(full_u, pre_u)
        values.append(conditioned / alone if answer and conditioned is not None and alone else None)
    return df.with_columns(pl.Series("ifd", values, dtype=pl.Float64), pl.Series("drop_reason", failures, dtype=pl.String))
