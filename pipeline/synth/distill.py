"""Reasoning distillation with verification (DeepSeek-R1's distillation data, OpenThoughts, s1K): k sampled answers
per problem from a reasoning model (or any model asked to think step by step), each split into `reasoning` and
`content`, its final answer extracted and verified (pipeline.synth.answers; code by the problem's tests in the
sandbox), and rejection sampling: the verified traces are kept (the shortest per problem, or all), the rest dropped
with their reason. A problem's pass rate (verified / answered samples) is its difficulty, used by s1-style selection
(pipeline.select.difficulty).

Problems are records whose first user turn is the problem and whose import fields hold the gold: `answer` (a string
or a list of accepted answers), optional `kind` (math, choice, short, code; default: code when `tests` is given,
choice when `choices` is, else math), `choices` (a list, shown as A., B., ... after the problem) and, for code,
`tests`: Python asserts run after the solution (HumanEval/MBPP style) or a list of {"input", "output"} stdin/stdout
cases (APPS/CodeContests style, compared line by line, trailing spaces ignored).

Drop reasons: `wrong_answer`, `no_answer` (no final answer found), `truncated` (the length limit cut it),
`unclosed_think` (a reasoning block never closed), code runs' `timeout`, `memory`, `network`, `runtime_error`,
`no_gold_answer` (the problem has no gold answer or tests), `not_shortest` (a verified trace longer than its
problem's shortest one), and failed requests' `engine_error:<kind>`.
"""
from __future__ import annotations

import json

import polars as pl

from pipeline.core.messages import THINK_TAGS, split_reasoning, unclosed_reasoning
from pipeline.core.records import POLARS_SCHEMA, dump_meta, first_pairs, meta_dicts, record_id, seed_of
from pipeline.core.sandbox import Limits, run_many
from pipeline.engines import Engine, Sampling, chat, failure_reason
from pipeline.synth.answers import KINDS, LETTERS, extract_answer, is_correct

SYSTEM = ("You are a careful problem solver. Think the problem through step by step inside <think> </think> tags, "
          "then write the final answer after the closing tag.")
# What each kind asks for at the end of the problem (DeepSeek-R1's recommended math prompt for math).
FORMAT = {"math": "Please reason step by step, and put your final answer within \\boxed{}.",
          "short": "Please reason step by step, and put your final answer within \\boxed{}.",
          "choice": "Please reason step by step, and put the letter of the correct option within \\boxed{}.",
          "code": "Write the complete solution as one Python code block (```python ... ```)."}
KEEP = ("shortest", "all")
SANDBOX_DROPS = {"timeout": "timeout", "memory": "memory", "network": "network", "error": "runtime_error"}


def problem_of(question: str, fields: dict, answers_column: str = "answer") -> dict:
    """A problem's kind, gold answers, options and tests from its first user turn and import fields."""
    gold = fields.get(answers_column)
    golds = [str(g) for g in (gold if isinstance(gold, list) else [gold]) if g is not None and str(g).strip()]
    choices = fields.get("choices") if isinstance(fields.get("choices"), list) else None
    tests = fields.get("tests")
    kind = fields.get("kind") or ("code" if tests else "choice" if choices else "math")
    if kind not in KINDS:
        raise ValueError(f"problem kind {kind!r} is not one of {list(KINDS)}")
    text = question + ("\n\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)) if choices else "")
    return {"kind": kind, "golds": golds, "tests": tests, "text": text}


def code_program(solution: str, tests) -> list[tuple[str, str | None, str | None]]:
    """(program, stdin, expected stdout) runs that check a solution: one with the asserts appended, or one per
    stdin/stdout case."""
    if isinstance(tests, str):
        return [(f"{solution}\n\n{tests}\n", None, None)]
    return [(solution, str(case.get("input", "")), str(case.get("output", ""))) for case in tests or []]


def _same_output(got: str, expected: str) -> bool:
    lines = lambda text: [line.rstrip() for line in text.strip().splitlines()]  # noqa: E731
    return lines(got) == lines(expected)


def check_code(solutions: list[str], tests: list, limits: Limits) -> list[str]:
    """Each solution's verdict against its problem's tests, all run in the sandbox at once: "correct",
    "wrong_answer" (a failed assert or a different output) or the sandbox's drop reason."""
    runs = [(i, *run) for i, (solution, test) in enumerate(zip(solutions, tests)) for run in code_program(solution, test)]
    outcomes = run_many([(program, stdin) for _, program, stdin, _ in runs], limits=limits)
    verdicts = ["correct"] * len(solutions)
    for (i, _, _, expected), outcome in zip(runs, outcomes):
        if verdicts[i] != "correct":
            continue
        if outcome.status == "error" and outcome.error.startswith("AssertionError"):
            verdicts[i] = "wrong_answer"
        elif outcome.status != "ok":
            verdicts[i] = SANDBOX_DROPS[outcome.status]
        elif expected is not None and not _same_output(outcome.stdout, expected):
            verdicts[i] = "wrong_answer"
    for i, test in enumerate(tests):
        if not code_program("", test):
            verdicts[i] = "no_gold_answer"
    return verdicts


def sample(df: pl.DataFrame, *, engine: Engine, n: int = 4, system: str | None = SYSTEM, max_tokens: int = 4096,
           temperature: float = 0.6, top_p: float = 0.95, tags: tuple[str, str] = THINK_TAGS,
           answers_column: str = "answer", seconds: float = 10.0, memory_mb: int = 512) -> pl.DataFrame:
    """Stage: `n` sampled answers per problem, one row each (parent_id: the problem), verified; wrong, unanswered,
    truncated or failed samples are dropped with their reason; every row has its problem's `pass_rate`."""
    tags = tuple(tags)
    ids, metas = df["id"].to_list(), meta_dicts(df)
    problems = [problem_of(q, m.get("fields", {}), answers_column) for (q, _), m in zip(first_pairs(df), metas)]
    askable = [i for i, p in enumerate(problems) if p["golds"] or (p["kind"] == "code" and p["tests"])]
    requests = [chat(f"{problems[i]['text']}\n\n{FORMAT[problems[i]['kind']]}", system=system or None) for i in askable]
    sampling = Sampling(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    completions = dict(zip(askable, engine.generate(requests, sampling, [seed_of("distill", ids[i]) % 2**31 for i in askable])))
    asked = {i: request.messages[-1]["content"] for i, request in zip(askable, requests)}
    rows, code_rows = [], []
    for i, (pid, meta, problem) in enumerate(zip(ids, metas, problems)):
        if i not in completions:
            rows.append({"id": pid, "parent_id": None, "messages": [{"role": "user", "content": problem["text"]}],
                         "drop_reason": "no_gold_answer", "meta": {**meta, "distill": {"kind": problem["kind"]}}})
            continue
        for j, completion in enumerate(completions[i]):
            reasoning, content = (completion.reasoning, completion.text) if completion.reasoning \
                else split_reasoning(completion.text, tags)
            answer = extract_answer(content, problem["kind"]) if content is not None else None
            verdict = (failure_reason([completion]) or ("truncated" if completion.finish_reason == "length" else None)
                       or ("unclosed_think" if unclosed_reasoning(content, tags) else None)
                       or (None if answer is not None else "no_answer"))
            if verdict is None and problem["kind"] != "code":
                verdict = "correct" if is_correct(answer, problem["golds"], problem["kind"]) else "wrong_answer"
            row = {"id": record_id("distill", pid, j), "parent_id": pid, "drop_reason": verdict,
                   "messages": [*([{"role": "system", "content": system}] if system else []),
                                {"role": "user", "content": asked[i]},
                                {"role": "assistant", "content": content or "", "reasoning": reasoning}],
                   "meta": {**meta, "distill": {"problem": pid, "sample": j, "kind": problem["kind"], "answer": answer,
                                                "golds": problem["golds"], "finish_reason": completion.finish_reason,
                                                "tokens": completion.n_tokens, "seed": seed_of("distill", pid) % 2**31 + j,
                                                "model": engine.model_name, "sampling": sampling.as_dict(),
                                                "tags": list(tags)}}}
            if verdict is None:
                code_rows.append((row, answer, problem["tests"]))
            rows.append(row)
    if code_rows:
        verdicts = check_code([a for _, a, _ in code_rows], [t for _, _, t in code_rows], Limits(seconds, memory_mb))
        for (row, _, _), verdict in zip(code_rows, verdicts):
            row["drop_reason"] = verdict
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["meta"].get("distill", {}).get("problem", row["id"]), []).append(row)
    for group in by_problem.values():
        answered = [r for r in group if r["parent_id"] and not (r["drop_reason"] or "").startswith("engine_error:")]
        correct = sum(r["drop_reason"] == "correct" for r in answered)
        for r in group:
            r["pass_rate"] = correct / len(answered) if answered else None
            r["meta"].setdefault("distill", {}).update(correct=correct, answered=len(answered), verified=r["drop_reason"] == "correct")
            r["drop_reason"] = None if r["drop_reason"] == "correct" else r["drop_reason"]
    frame = pl.DataFrame({"id": [r["id"] for r in rows], "parent_id": [r["parent_id"] for r in rows],
                          "source": ["distill"] * len(rows), "messages": [r["messages"] for r in rows],
                          "pass_rate": [r["pass_rate"] for r in rows], "drop_reason": [r["drop_reason"] for r in rows]},
                         schema={"id": pl.String, "parent_id": pl.String, "source": pl.String,
                                 "messages": POLARS_SCHEMA["messages"], "pass_rate": pl.Float64, "drop_reason": pl.String})
    return frame.with_columns(dump_meta([r["meta"] for r in rows]))


def trace_length(messages: pl.Expr = pl.col("messages")) -> pl.Expr:
    """Characters of a row's assistant turns, reasoning and content."""
    assistant = pl.element().filter(pl.element().struct.field("role") == "assistant")
    return messages.list.eval(assistant.struct.field("reasoning").fill_null("").str.len_chars()
                              + assistant.struct.field("content").fill_null("").str.len_chars()).list.sum()


def keep(df: pl.DataFrame, *, keep: str = "shortest") -> pl.DataFrame:
    """Stage (all rows at once): rejection sampling's choice among a problem's verified traces: the shortest (ties: the
    first sample) or all; the others are dropped as `not_shortest`."""
    if keep not in KEEP:
        raise ValueError(f"unknown keep rule {keep!r}; valid: {list(KEEP)}")
    if keep == "all" or not df.height:
        return df
    problem = pl.coalesce("parent_id", "id")
    ranked = df.with_row_index("_order").with_columns(trace_length().alias("_length"))
    first = ranked.sort("_length", "_order").group_by(problem.alias("_problem"), maintain_order=True).agg(pl.col("_order").first())
    shortest = ranked["_order"].is_in(first["_order"].implode())
    reason = pl.when(shortest).then(pl.col("drop_reason")).otherwise(pl.lit("not_shortest"))
    return df.with_columns(reason.alias("drop_reason") if "drop_reason" in df.columns else
                           pl.when(shortest).then(None).otherwise(pl.lit("not_shortest")).alias("drop_reason"))


def pass_rates(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per problem (`problem`, `pass_rate`, `answered`) from a sample stage's kept and dropped rows."""
    if not rows.height:
        return pl.DataFrame(schema={"problem": pl.String, "pass_rate": pl.Float64, "answered": pl.Int64})
    meta = pl.col("meta").str.json_path_match
    return (rows.select(meta("$.distill.problem").alias("problem"), "pass_rate",
                        meta("$.distill.answered").cast(pl.Int64).alias("answered"), "id")
            .with_columns(pl.coalesce("problem", "id")).group_by("problem", maintain_order=True)
            .agg(pl.col("pass_rate").first(), pl.col("answered").first()))


def describe(params: dict) -> str:
    """The verification settings of a sample stage, as the card states them."""
    from importlib.metadata import version

    from pipeline.core.sandbox import isolation

    return (f"k = {params.get('n', 4)} samples per problem (T {params.get('temperature', 0.6)}, top-p "
            f"{params.get('top_p', 0.95)}, {params.get('max_tokens', 4096)} tokens), reasoning split at "
            f"{json.dumps(list(params.get('tags', THINK_TAGS)))}; math verified with math-verify {version('math-verify')}, "
            "choices by option letter, short answers by normalised match, code by its tests in a sandboxed subprocess "
            f"({params.get('seconds', 10.0)} s, {params.get('memory_mb', 512)} MiB, network cut by {isolation()})")
