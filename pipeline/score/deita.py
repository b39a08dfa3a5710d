"""deita complexity and quality scores (Liu et al., ICLR 2024; arXiv 2312.15685).

score = sum_k k * softmax(z_k) over the six tokens "1".."6" only (looked up by string among the returned
top-k logprobs), from one batched `generate(max_tokens=1, logprobs=k)` call per shard. A digit missing
from the returned logprobs makes the score null (counted by the stage), never a default value.
Multi-turn conversations are scored per (user, assistant) turn; deita_score = sum_t complexity_t * quality_t.

Inputs longer than the scorer's context (deita's scorers are LLaMA-1-13B fine-tunes: 2048 tokens) are scored with the
response (complexity: the instruction) cut from its end until the prompt fits, the prompt's closing label line kept,
and a StageWarning on the record. deita's reference code never cuts: its transformers path runs past the model's
positions, its vLLM path has the request refused and returns 3.0; neither is a score of the row (deviation table).

Two prompt modes ("auto", the default, picks scorer on engines that take raw text, judge on chat APIs): "scorer"
sends the exact official prompt as raw text, as the published
hkust-nlp/deita-*-scorer models expect; "judge" puts it in the engine's chat template, the prompt's
body as the user turn and its label line ("##Complexity: ") opening the assistant's reply, for an
instruct model used as a generic judge. On SmolLM2 both give all six digits in the top 20.
"""
from __future__ import annotations

import warnings
from itertools import accumulate
from typing import Callable

import polars as pl

from pipeline.engines import Engine, Sampling, chat, failure_reason, raw_text_template
from pipeline.core.records import messages_of, turns
from pipeline.core.rundir import StageWarning
from pipeline.score.ratings import RATED_DIGIT_NOTE, expected_rating, rating

# Official strings (hkust-nlp/deita selection/scorer), spacing included: two spaces before "\n##Complexity",
# a space after {output}, a trailing space after each colon.
COMPLEXITY_PROMPT = ("You are a helpful assistant. Please identify the complexity score of the following user query. \n"
                     "##Query: {instruction}  \n##Complexity: ")
QUALITY_PROMPT = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
                  "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
DIGITS = ("1", "2", "3", "4", "5", "6")
MODES = ("auto", "scorer", "judge")


def expected_score(top_logprobs: dict[str, float] | None) -> float | None:
    """Expected value of the digit 1..6 under a softmax over the six digits' logprobs; None if any is missing.

    >>> expected_score({d: 0.0 for d in "123456"})
    3.5
    >>> expected_score({"1": -1.0, "2": -1.0})  # digits 3..6 not returned
    """
    return expected_rating(top_logprobs, DIGITS)


DIGIT_HINT = "\nAnswer with the score only: one digit from 1 to 6."


def _prompt(engine: Engine, text: str, mode: str):
    if mode == "scorer":
        return text
    # Judge: the prompt's body is the user turn and its last line ("##Complexity: ") opens the assistant's
    # reply, so the next token is the score rather than a preamble. An engine that may not continue that opening
    # (a chat API without prefill, or one whose rating is read from its words) is also told to answer with the digit.
    body, label = text.rsplit("\n", 1)
    trusted = getattr(engine, "prefills", True) and getattr(engine, "has_logprobs", True)
    return chat(body.rstrip() + ("" if trusted else DIGIT_HINT), opening=label)


PARTS = ("both", "complexity", "quality")
CUT_WARNING = ("deita prompts longer than the scorer's context were scored with their response (complexity: the "
               "instruction) cut from the end to fit")


def fit_to_context(engine: Engine, build: Callable[[str, str], str], pairs: list[tuple[str, str]],
                   cut: tuple[int, ...] = (1, 0), rounds: int = 8) -> tuple[list[str], int]:
    """The prompts `build(instruction, output)` for `pairs`; where one leaves no room for a generated token in the
    engine's context, the pair's fields are cut from their end, in the order `cut` names them (1: the output, then
    0: the instruction), until it fits. Returns (prompts, how many were cut). Engines that cannot count tokens get the
    prompts as they are (an over-long one then fails as too_long).

    >>> from pipeline.engines import EngineSpec, load_engine
    >>> engine = load_engine(EngineSpec.make("fake", "m", options={"context_length": 6}))
    >>> fit_to_context(engine, lambda i, o: f"Q: {i} A: {o}", [("two words", "one two three four five")])
    (['Q: two words A: one '], 1)
    """
    fields = [list(pair) for pair in pairs]
    prompts = [build(*pair) for pair in fields]
    limit = getattr(engine, "context_length", None)
    counts = engine.count_tokens(prompts) if limit and prompts else None
    if not counts:
        return prompts, 0
    over = [j for j, n in enumerate(counts) if n >= limit]
    was_cut = set(over)
    for _ in range(rounds):
        if not over:
            break
        for j in over:
            field = next((f for f in cut if fields[j][f]), None)
            if field is None:
                continue
            # keep the share of the text that fits, with room for the tokenizer's rounding
            keep = max(0.0, 1 - (counts[j] - limit + 1) / max(counts[j], 1)) * 0.97
            fields[j][field] = fields[j][field][:int(len(fields[j][field]) * keep)]
            prompts[j] = build(*fields[j])
        recounted = engine.count_tokens([prompts[j] for j in over])
        for j, n in zip(over, recounted):
            counts[j] = n
        over = [j for j in over if counts[j] >= limit and any(fields[j][f] for f in cut)]
    return prompts, len(was_cut)


def _per_row(values: list, lengths: list[int]) -> list[list]:
    """Split a flat list into consecutive runs of the given lengths.

    >>> _per_row([1, 2, 3], [2, 1])
    [[1, 2], [3]]
    """
    starts = [0, *accumulate(lengths)]
    return [values[start:start + n] for start, n in zip(starts, lengths)]


def score(df: pl.DataFrame, *, engine: Engine, mode: str = "auto", top_logprobs: int = 20,
          part: str = "both") -> pl.DataFrame:
    """Add `complexity`, `quality` (per turn) and `deita_score`; one engine call for the whole frame.

    deita's published scorers are two models (hkust-nlp/deita-complexity-scorer and -quality-scorer): score
    with `part="complexity"` on the first, then `part="quality"` on the second, which reads the `complexity`
    column and adds the rest. A turn whose digits are not all among the top `top_logprobs` tokens gets a null
    score, and the row's `deita_score` is null (counted by the runner). A row with a failed request gets
    `drop_reason = engine_error:<kind>`, never a score.
    """
    if mode not in MODES or part not in PARTS:
        raise ValueError(f"deita mode must be in {list(MODES)} and part in {list(PARTS)}; got {mode!r}, {part!r}")
    if mode == "auto":  # the scorers' raw prompt where the engine takes raw text; a chat API gets it as a conversation
        mode = "scorer" if getattr(engine, "template", None) is not None else "judge"
    if mode == "scorer":
        raw_text_template(engine, "deita's scorer prompt (--score-mode judge sends it as a conversation)")
    if part == "quality" and "complexity" not in df.columns:
        raise ValueError("deita part='quality' reads the `complexity` column: run part='complexity' first")
    if df.is_empty():
        name, dtype = ("complexity", pl.List(pl.Float64)) if part == "complexity" else ("deita_score", pl.Float64)
        return df.with_columns(pl.lit(None, dtype=dtype).alias(name))
    pairs = [turns(c) for c in messages_of(df)]
    flat_pairs = [pair for c in pairs for pair in c]
    prompts, cut = [], 0
    if part != "quality":
        fitted, n = fit_to_context(engine, lambda i, o: _prompt(engine, COMPLEXITY_PROMPT.format(instruction=i), mode),
                                   flat_pairs, cut=(0,))
        prompts, cut = prompts + fitted, cut + n
    if part != "complexity":
        fitted, n = fit_to_context(engine, lambda i, o: _prompt(engine, QUALITY_PROMPT.format(instruction=i, output=o), mode),
                                   flat_pairs, cut=(1, 0))
        prompts, cut = prompts + fitted, cut + n
    if cut:
        warnings.warn(CUT_WARNING, StageWarning, stacklevel=2)
    prefills = mode == "scorer" or getattr(engine, "prefills", True)  # the reply opened up to the digit
    # one token is the digit's distribution; where the rating is read from words, the words need room
    reads_one = prefills and getattr(engine, "has_logprobs", True)
    completions = [c[0] for c in engine.generate(prompts, Sampling(temperature=0.0, max_tokens=1 if reads_one else 16,
                                                                   logprobs=top_logprobs))]
    rated = [rating(c, DIGITS, first_token=prefills) for c in completions]
    if any(by_digit for _, by_digit in rated):
        warnings.warn(RATED_DIGIT_NOTE, StageWarning, stacklevel=2)
    flat = [value for value, _ in rated]
    lengths = [len(c) for c in pairs]
    row_of_turn = [row for row, n in enumerate(lengths) for _ in range(n)]
    failures: list[str | None] = [None] * df.height  # a row fails with its first failed request, in either part
    for row, completion in zip(row_of_turn * (2 if part == "both" else 1), completions):
        failures[row] = failures[row] or failure_reason([completion])
    errors = pl.Series("drop_reason", failures, dtype=pl.String)
    if part == "quality":
        complexity = [list(given or []) for given in df["complexity"].to_list()]
        if [len(c) for c in complexity] != lengths:
            raise ValueError("the `complexity` column does not have one score per turn; re-run part='complexity'")
    else:
        complexity, flat = _per_row(flat[:sum(lengths)], lengths), flat[sum(lengths):]
    if part == "complexity":
        return df.with_columns(pl.Series("complexity", complexity, dtype=pl.List(pl.Float64)), errors)
    quality = _per_row(flat, lengths)
    final = [sum(c * q for c, q in zip(c_t, q_t)) if c_t and None not in c_t + q_t else None
             for c_t, q_t in zip(complexity, quality)]
    return df.with_columns(pl.Series("complexity", complexity, dtype=pl.List(pl.Float64)),
                           pl.Series("quality", quality, dtype=pl.List(pl.Float64)),
                           pl.Series("deita_score", final, dtype=pl.Float64), errors)
