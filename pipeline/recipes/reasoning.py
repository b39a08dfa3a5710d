"""Jobs for reasoning and tool-use data: `distill` (k verified samples per problem → trace-quality filters →
rejection sampling → optional s1-style selection of a budget of problems) and `tools` (APIGen: plan → generate →
format → execution → semantic checks → final answers)."""
from __future__ import annotations

import json
from pathlib import Path

from filters.reasoning import REASONING
from pipeline.core.codehash import code_hash
from pipeline.core.inputs import content_hash
from pipeline.core.records import record_id
from pipeline.core.rundir import check_identity, write_shard
from pipeline.engines import EngineSpec
from pipeline.recipes.steps import Progress, Step, input_job, run_job
from pipeline.synth import tools as tool_stages
from pipeline.synth.distill import KEEP


def distill_steps(*, n: int = 4, system: str | None = None, max_tokens: int = 4096, temperature: float = 0.6,
                  top_p: float = 0.95, tags: tuple[str, str] = ("<think>", "</think>"), answers_column: str = "answer",
                  keep: str = "shortest", trace_filters: bool = True, budget: int | None = None, tau: float = 0.9,
                  max_pass_rate: float = 1.0, embedder: str = "minilm", seconds: float = 10.0, memory_mb: int = 512,
                  shard_size: int = 16) -> list[Step]:
    """k samples per problem, verified → trace filters (filters.reasoning.REASONING) → the shortest (or every) verified trace per
    problem → with `budget`, problem embeddings and the s1-style selection of `budget` problems."""
    from pipeline.synth.distill import SYSTEM

    if keep not in KEEP:
        raise ValueError(f"unknown keep rule {keep!r}; valid: {list(KEEP)}")
    sample = {"n": n, "system": SYSTEM if system is None else system, "max_tokens": max_tokens, "temperature": temperature,
              "top_p": top_p, "tags": list(tags), "answers_column": answers_column, "seconds": seconds, "memory_mb": memory_mb}
    steps = [Step("sampled", "pipeline.synth.distill:sample", sample, shard_size=shard_size, computes=("pass_rate",))]
    if trace_filters:
        steps.append(Step("traces-filtered", "filters:mark", {"spec": REASONING}, uses_engine=False, shard_size=4096))
    steps.append(Step("verified", "pipeline.synth.distill:keep", {"keep": keep}, uses_engine=False, shard_size=None))
    if budget:
        steps += [Step("embedded", "pipeline.score.embed:embed", {"field": "instruction", "embedder": embedder},
                       uses_engine=False, shard_size=4096),
                  Step("selected", "pipeline.select.difficulty:select_problems",
                       {"k": budget, "tau": tau, "max_pass_rate": max_pass_rate}, uses_engine=False, shard_size=None)]
    return steps


def distill_job(out: Path, *, input_path: Path, engine: EngineSpec, strict: bool = False, salvage: bool = False,
                max_failure_rate: float = 0.1, on_progress: Progress | None = None, **step_options) -> dict:
    """Verified reasoning traces for the problems at `input_path` into `out`."""
    return input_job(out, input_path=input_path, steps=distill_steps(**step_options), engine=engine, strict=strict,
                     salvage=salvage, max_failure_rate=max_failure_rate, on_progress=on_progress)


def tools_steps(*, functions: str | None = None, python_path: str | None = None, functions_hash: str | None = None,
                judge: str | None = None, semantic: bool = True, max_tokens: int = 512, answer_max_tokens: int = 256,
                temperature: float = 0.7, seconds: float = 10.0, memory_mb: int = 512, shard_size: int = 32) -> list[Step]:
    """generate → format check → execution check (with `functions`) → semantic check (an engine judge: `judge`, EngineSpec
    JSON, else the job's engine) → final answers. `functions_hash` (of the functions' source) makes their code part of
    the execution step's identity."""
    steps = [Step("generated", "pipeline.synth.tools:generate", {"max_tokens": max_tokens, "temperature": temperature},
                  shard_size=shard_size),
             Step("format-checked", "pipeline.synth.tools:check_format", {}, uses_engine=False, shard_size=4096)]
    if functions:
        steps.append(Step("executed", "pipeline.synth.tools:execute",
                          {"functions": functions, "python_path": python_path, "functions_hash": functions_hash,
                           "seconds": seconds, "memory_mb": memory_mb}, uses_engine=False, shard_size=256))
    if semantic:
        steps.append(Step("judged", "pipeline.synth.tools:judge", {}, shard_size=shard_size, engine=judge))
    steps.append(Step("answered", "pipeline.synth.tools:answer", {"max_tokens": answer_max_tokens}, shard_size=shard_size))
    return steps


def write_tools_plan(out: Path, *, tools: list[str], n: int, seed: int, examples: list[dict], max_tools: int = 3,
                     parallel_share: float = 0.5) -> Path:
    """DIR/plan/shard-*.parquet: the `n` rows to generate (identity: the tools, examples, n, seed and draws)."""
    plan_dir = Path(out) / "plan"
    check_identity(plan_dir, {"stage": "plan", "code": code_hash(tool_stages.plan), "n": n, "seed": seed,
                              "tools": record_id("tools", *tools), "examples": record_id("examples", json.dumps(examples)),
                              "max_tools": max_tools, "parallel_share": parallel_share})
    if not (plan_dir / "shard-00000.parquet").exists():
        frame = tool_stages.plan(tools, n=n, seed=seed, examples=examples, max_tools=max_tools, parallel_share=parallel_share)
        write_shard(frame, plan_dir / "shard-00000.parquet")
    return plan_dir


def read_examples(path: Path | None) -> list[dict]:
    """Seed examples ({"query", "calls": [{"name", "arguments"}]}) from records with tool calls or xLAM rows."""
    if not path:
        return []
    from pipeline.core import inputs
    from pipeline.core.records import compact

    examples = []
    for conversation in inputs.load(path, strict=False)["messages"].to_list():
        turns = compact(conversation)
        calls = [c["function"] for m in turns if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        user = next((m["content"] for m in turns if m["role"] == "user"), None)
        if user and calls:
            examples.append({"query": user, "calls": [{"name": c["name"], "arguments": json.loads(c["arguments"])}
                                                      for c in calls]})
    return examples


def functions_source(functions: str | None, python_path: str | None) -> str | None:
    """The content hash of the file or package that defines `functions` (so a change to it re-runs the execution)."""
    if not functions:
        return None
    root = Path(python_path or ".") / Path(*functions.split("."))
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    found = [f for f in files if f.exists()]
    if not found:
        raise ValueError(f"--functions {functions}: no module {root}.py or package {root}/ (run from the directory "
                         "that holds it, or give --functions-path)")
    return record_id("functions", *(content_hash(f) for f in found))


def tools_job(out: Path, *, tools: Path, n: int, engine: EngineSpec, seed: int = 0, examples: Path | None = None,
              functions: str | None = None, python_path: str | None = None, max_tools: int = 3,
              parallel_share: float = 0.5, max_failure_rate: float = 0.1, on_progress: Progress | None = None,
              **step_options) -> dict:
    """Function-calling data for the tools at `tools` into `out` (APIGen's checks; pipeline.synth.tools)."""
    schemas = tool_stages.load_tools(tools)
    python_path = str(Path(python_path or ".").resolve()) if functions else None
    steps = tools_steps(functions=functions, python_path=python_path,
                        functions_hash=functions_source(functions, python_path), **step_options)
    seeds = read_examples(examples)
    return run_job(out, steps, lambda d: write_tools_plan(d, tools=schemas, n=n, seed=seed, examples=seeds,
                                                          max_tools=max_tools, parallel_share=parallel_share),
                   engine=engine, card="Function-calling data (APIGen checks)", max_failure_rate=max_failure_rate,
                   on_progress=on_progress)
