"""An LLM judge with the user's rubric: pointwise ratings on a scale, or pairwise preferences with position swap,
for one or several named aspects (UltraFeedback's helpfulness / honesty / ..., Prometheus's score rubrics).

Pointwise: each (row, aspect) is one request whose reply is opened with "Score: ", so the next token is the rating;
the score is the expected rating over the scale's digits from that token's logprobs (pipeline.score.ratings, the
way deita's scorer reads its digits), or, on an engine without logprobs or prefill (Anthropic, a chat API that
cannot continue an opening), the digit the judge wrote (noted on the record). The scale is single digits
(0..9 at most): a two-token rating has no one-token distribution to take the expectation over.

Pairwise (rows with `chosen` and `rejected`): each (row, aspect) is asked twice, the chosen response first and then
second, and the judge answers 1 or 2; P(chosen better) is read from the logprobs of "1" and "2" in each order and
averaged, which cancels the judge's position bias (MT-Bench's swap; a judge that always says "1" gives 0.5). Rows
without a pair are dropped as `no_pair`.

Writes `judge_scores` (one {aspect, score} per aspect; a later judge step adds its aspects and replaces same-named
ones) and `judge_score` (this step's mean over its aspects: the column filters and selection read), the raw replies
in meta["judge"][aspect]. A rating the reply does not give is a null score, counted by the runner, never a default.
"""
from __future__ import annotations

import warnings

import polars as pl

from pipeline.core.prompts import compile_template, render_rows, row_fields
from pipeline.core.records import dump_meta, meta_dicts
from pipeline.core.rundir import StageWarning
from pipeline.engines import Engine, Sampling, chat, failure_reason
from pipeline.score.ratings import RATED_DIGIT_NOTE, rating

MODES = ("pointwise", "pairwise")
DEFAULT_ASPECT = "overall"
POINTWISE_OPENING, PAIRWISE_OPENING = "Score: ", "Better response: "

POINTWISE_PROMPT = """{{ rubric }}
{% if aspect_description %}
Aspect to rate, {{ aspect }}: {{ aspect_description }}
{% endif %}
Rate the assistant's last reply in this conversation on a scale from {{ low }} (worst) to {{ high }} (best).

{% for m in messages %}[{{ m.role }}]
{{ m.content }}

{% endfor %}Answer with the score only: one number from {{ low }} to {{ high }}."""

PAIRWISE_PROMPT = """{{ rubric }}
{% if aspect_description %}
Aspect to compare, {{ aspect }}: {{ aspect_description }}
{% endif %}
Which response answers this conversation better?

{% for m in conversation %}[{{ m.role }}]
{{ m.content }}

{% endfor %}[Response 1]
{{ response_1 }}

[Response 2]
{{ response_2 }}

Answer with 1 or 2 only."""

SCORE = pl.Struct({"aspect": pl.String, "score": pl.Float64})


def check_params(*, rubric: str, scale=(1, 5), aspects: dict | None = None, mode: str = "pointwise",
                 prompt: str | None = None, system: str | None = None, top_logprobs: int = 20) -> None:
    """Raise ValueError (one line) for settings `judge` would refuse; recipes call it before any model loads."""
    if mode not in MODES:
        raise ValueError(f"judge mode {mode!r} is not one of {list(MODES)}")
    if not isinstance(rubric, str) or not rubric.strip():
        raise ValueError("judge needs a rubric: the text that says what a good reply is")
    _digits(scale)
    if aspects is not None and (not isinstance(aspects, dict) or not aspects
                                or not all(isinstance(k, str) and isinstance(v, str) for k, v in aspects.items())):
        raise ValueError("judge aspects are {name: what it means}, e.g. {helpfulness: 'Does it solve the task?'}")
    if not isinstance(top_logprobs, int) or top_logprobs < 1:
        raise ValueError(f"judge top_logprobs must be a positive integer (got {top_logprobs!r})")
    compile_template(prompt or "", "judge prompt")
    compile_template(system or "", "judge system")


def _digits(scale) -> tuple[str, ...]:
    """The rating tokens of `scale` ([low, high], single digits).

    >>> _digits([1, 5])
    ('1', '2', '3', '4', '5')
    """
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2 or not all(isinstance(v, int) for v in scale)
            or not 0 <= scale[0] < scale[1] <= 9):
        raise ValueError(f"judge scale must be [low, high] with 0 <= low < high <= 9 (single-digit ratings, read from "
                         f"one token's logprobs); got {scale!r}")
    return tuple(str(v) for v in range(scale[0], scale[1] + 1))


def _pairs(df: pl.DataFrame) -> list[tuple[list, str, str] | None]:
    """Per row (the conversation before the responses, chosen's last reply, rejected's last reply), or None."""
    found = []
    for chosen, rejected in zip(df["chosen"].to_list() if "chosen" in df.columns else [None] * df.height,
                                df["rejected"].to_list() if "rejected" in df.columns else [None] * df.height):
        ok = chosen and rejected and chosen[-1]["role"] == rejected[-1]["role"] == "assistant"
        found.append((list(chosen[:-1]), chosen[-1]["content"], rejected[-1]["content"]) if ok else None)
    return found


def judge(df: pl.DataFrame, *, engine: Engine, rubric: str, scale: list[int] = (1, 5), aspects: dict[str, str] | None = None,
          mode: str = "pointwise", prompt: str | None = None, system: str | None = None,
          top_logprobs: int = 20) -> pl.DataFrame:
    """Add `judge_scores` and `judge_score` by the rubric (see the module docstring); one engine call per shard.

    `prompt` replaces the built-in layout: a Jinja template over the row's fields (pipeline.core.prompts) and
    `rubric`, `aspect`, `aspect_description`, `low`, `high` (pairwise also `conversation`, `response_1`,
    `response_2`); it should end by asking for the rating alone. `system`: the judge's system prompt (a template too).
    """
    check_params(rubric=rubric, scale=scale, aspects=aspects, mode=mode, prompt=prompt, system=system,
                 top_logprobs=top_logprobs)
    digits = _digits(scale)
    if df.is_empty():
        return df.with_columns(pl.lit(None, dtype=pl.List(SCORE)).alias("judge_scores"),
                               pl.lit(None, dtype=pl.Float64).alias("judge_score"))
    named = list((aspects or {DEFAULT_ASPECT: ""}).items())
    rows, ids = row_fields(df), df["id"].to_list()
    pairs = _pairs(df) if mode == "pairwise" else [None] * df.height
    asked = [i for i in range(df.height) if mode == "pointwise" or pairs[i] is not None]
    # every request: (row, aspect index, order) with order 0 = chosen first, 1 = chosen second (pairwise only)
    keys = [(i, a, order) for i in asked for a in range(len(named)) for order in ((0, 1) if mode == "pairwise" else (0,))]
    template = prompt or (PAIRWISE_PROMPT if mode == "pairwise" else POINTWISE_PROMPT)
    common = {"rubric": rubric, "low": scale[0], "high": scale[1]}
    texts = []
    for i, a, order in keys:
        extra = common | {"aspect": named[a][0], "aspect_description": named[a][1]}
        if mode == "pairwise":
            conversation, chosen, rejected = pairs[i]
            first, second = (chosen, rejected) if order == 0 else (rejected, chosen)
            extra |= {"conversation": conversation, "response_1": first, "response_2": second}
        texts.append(render_rows(template, [rows[i]], [ids[i]], what="judge prompt", **extra)[0])
    systems = render_rows(system, [rows[i] for i, _, _ in keys], [ids[i] for i, _, _ in keys], what="judge system",
                          **common) if system else [None] * len(keys)
    prefills = getattr(engine, "prefills", True)
    reads_one = prefills and getattr(engine, "has_logprobs", True)  # else the rating is read from the words
    opening = PAIRWISE_OPENING if mode == "pairwise" else POINTWISE_OPENING
    replies = [c[0] for c in engine.generate([chat(t, system=s, opening=opening) for t, s in zip(texts, systems)],
                                             Sampling(temperature=0.0, max_tokens=1 if reads_one else 16,
                                                      logprobs=top_logprobs))] if keys else []
    rated = [rating(c, ("1", "2") if mode == "pairwise" else digits, first_token=prefills) for c in replies]
    if any(by_digit for _, by_digit in rated):
        warnings.warn(RATED_DIGIT_NOTE, StageWarning, stacklevel=2)
    found: dict[tuple[int, int, int], tuple] = {key: (value, reply) for key, (value, _), reply in zip(keys, rated, replies)}
    metas, failures = meta_dicts(df), [None if p is not None or mode == "pointwise" else "no_pair" for p in pairs]
    merged, means, judged = [], [], set(asked)
    before = df["judge_scores"].to_list() if "judge_scores" in df.columns else [None] * df.height
    for i in range(df.height):
        earlier = [s for s in before[i] or [] if s["aspect"] not in dict(named)]  # other judges' aspects stay
        if i not in judged:
            merged.append(earlier or None)
            means.append(None)
            continue
        scores = []
        for a, (aspect, _) in enumerate(named):
            orders = [found[(i, a, order)] for order in ((0, 1) if mode == "pairwise" else (0,))]
            failures[i] = failures[i] or failure_reason([reply for _, reply in orders])
            values = [value for value, _ in orders]
            if mode == "pairwise":  # E over {1, 2} is 1 + P("2"): chosen wins with P("1") first, P("2") second
                values = [None if values[0] is None else 2.0 - values[0], None if values[1] is None else values[1] - 1.0]
            score = None if None in values else sum(values) / len(values)
            scores.append({"aspect": aspect, "score": score})
            metas[i].setdefault("judge", {})[aspect] = {
                "model": engine.model_name, "mode": mode, "scale": list(scale),
                "raw": [reply.text for _, reply in orders]}
        merged.append(earlier + scores)
        values = [s["score"] for s in scores]
        means.append(None if None in values else sum(values) / len(values))
    return df.with_columns(pl.Series("judge_scores", merged, dtype=pl.List(SCORE)),
                           pl.Series("judge_score", means, dtype=pl.Float64), dump_meta(metas),
                           pl.Series("drop_reason", failures, dtype=pl.String))
