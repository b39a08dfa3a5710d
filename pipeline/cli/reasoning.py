"""`aligndata distill` (verified reasoning traces) and `aligndata tools` (function-calling data with APIGen's checks)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (API_KEY_ENV, BASE_URL, ENGINE, MODEL, OPTION, SALVAGE, STRICT, TEMPLATE, Backend, app,
                                 choice, engine_spec, fail, role, run_job, shard_size_option)
from pipeline.synth.distill import KEEP

Keep = choice(KEEP)


@app.command()
def distill(
    input: Path = typer.Option(..., help="Problems: `problem`/`instruction` (or messages) with `answer`, optional `kind` "
                                         "(math, choice, short, code), `choices`, `tests` (any format curate reads)."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    n: int = typer.Option(4, min=1, help="Samples per problem (k)."),
    keep: Keep = typer.Option("shortest", help="Verified traces kept per problem: shortest or all."),
    budget: Optional[int] = typer.Option(None, min=1, help="s1-style selection: keep this many problems, hardest "
                                                           "(lowest pass rate) first, diverse by embedding."),
    tau: float = typer.Option(0.9, help="With --budget: skip a problem within this cosine of one already selected."),
    max_pass_rate: float = typer.Option(1.0, help="With --budget: drop problems solved more often than this (too easy)."),
    system: Optional[str] = typer.Option(None, help="System prompt (default: think step by step in <think> tags; '' for "
                                                    "none, e.g. for a reasoning model)."),
    think_open: str = typer.Option("<think>", help="The tag that opens the model's reasoning."),
    think_close: str = typer.Option("</think>", help="The tag that closes it."),
    max_tokens: int = typer.Option(4096, help="Length limit of a sample; a sample cut there is dropped as truncated."),
    temperature: float = typer.Option(0.6, help="Sampling temperature (DeepSeek-R1's recommended 0.6)."),
    top_p: float = typer.Option(0.95),
    answers_column: str = typer.Option("answer", help="The input field with the gold answer(s)."),
    trace_filters: bool = typer.Option(True, help="Drop traces with an open think block, repetition or mixed scripts."),
    seconds: float = typer.Option(10.0, help="Time limit of a code sample's test run."),
    memory_mb: int = typer.Option(512, help="Memory limit of a code sample's test run (MiB)."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(16),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """Reasoning distillation: k samples per problem, answers verified (math-verify, option letters, normalised short
    answers, code tests in a sandbox), the shortest verified trace kept (rejection sampling), pass rates in the card."""
    run_job("distill_job", out, input_path=input, engine=engine_spec(engine, model, base_url, template, option, api_key_env),
            strict=strict, salvage=salvage, n=n, keep=keep, budget=budget, tau=tau, max_pass_rate=max_pass_rate,
            system=system, tags=(think_open, think_close), max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            answers_column=answers_column, trace_filters=trace_filters, seconds=seconds, memory_mb=memory_mb,
            shard_size=shard_size)


@app.command()
def tools(
    tools: Path = typer.Option(..., "--tools", help="JSON list of tool schemas ({name, description, parameters}, or "
                                                    "OpenAI's {type: function, function: {...}})."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    n: int = typer.Option(100, min=1, help="Examples to generate (before the checks drop any)."),
    seed: int = typer.Option(0),
    functions: Optional[str] = typer.Option(None, help="Python module with an implementation per tool (e.g. "
                                                       "mypkg.tools): every call is executed in the sandbox."),
    functions_path: Optional[Path] = typer.Option(None, help="Directory the --functions module is imported from "
                                                             "(default: the current one)."),
    examples: Optional[Path] = typer.Option(None, help="Seed examples: records with tool calls or xLAM rows."),
    parallel_share: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of examples asking for parallel calls."),
    max_tools: int = typer.Option(3, min=1, help="Most tools offered to one example."),
    judge: Optional[str] = typer.Option(None, help="The semantic judge: a model on the same engine, or an engine block "
                                                   "as JSON (default: the generating model)."),
    semantic: bool = typer.Option(True, help="Run the semantic check."),
    max_tokens: int = typer.Option(512),
    temperature: float = typer.Option(0.7),
    seconds: float = typer.Option(10.0, help="Time limit of one example's executed calls."),
    memory_mb: int = typer.Option(512, help="Memory limit of one example's executed calls (MiB)."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(32),
) -> None:
    """Function-calling data with APIGen's checks: queries and calls for your tools, kept when every call validates
    against its schema, runs without error (with --functions) and a judge says it answers the query."""
    spec = engine_spec(engine, model, base_url, template, option, api_key_env)
    judge_spec = role(spec, judge)
    try:
        run_job("tools_job", out, tools=tools, n=n, engine=spec, seed=seed, examples=examples, functions=functions,
                python_path=str(functions_path) if functions_path else None, max_tools=max_tools,
                parallel_share=parallel_share, judge=judge_spec.to_json() if judge_spec else None, semantic=semantic,
                max_tokens=max_tokens, temperature=temperature, seconds=seconds, memory_mb=memory_mb,
                shard_size=shard_size)
    except ValueError as exc:
        raise fail(exc) from exc
