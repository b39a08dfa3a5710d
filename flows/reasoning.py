"""The distill and tools flows: verified reasoning traces over the user's problems, and function-calling data with
APIGen's checks over the user's tools, each step one cached task (flows.tasks.run_steps)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.tasks import engine_json, input_task, run_steps
from pipeline import recipes
from pipeline.core.rundir import writer_lock
from pipeline.recipes import reasoning


@flow(name="distill")
def distill_flow(out: str, input_path: str, engine: dict | None = None, options: dict | None = None,
                 max_failure_rate: float = 0.1, gpus: float = 0.0) -> str:
    """Verified reasoning traces for the problems at `input_path` into `out`; returns the export's path. `options` are
    reasoning.distill_steps' keyword arguments (n, keep, budget, tau, max_tokens, ...); `engine` EngineSpec.make's."""
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused
        source = input_task.submit(out, input_path).result()
        last = run_steps(out, reasoning.distill_steps(**(options or {})), source, engine=engine_json(engine),
                         max_failure_rate=max_failure_rate, gpus=gpus)
        return str(recipes.export_parquet(Path(out), Path(last), card="Verified reasoning traces"))


@task(cache_policy=NO_CACHE)
def tools_plan_task(out: str, tools: str, n: int, seed: int, examples: str | None, max_tools: int,
                    parallel_share: float) -> str:
    """The rows to generate, each with its tools, mode and seed examples (rewritten identically on a resume)."""
    from pipeline.synth.tools import load_tools

    return str(reasoning.write_tools_plan(Path(out), tools=load_tools(tools), n=n, seed=seed,
                                          examples=reasoning.read_examples(Path(examples) if examples else None),
                                          max_tools=max_tools, parallel_share=parallel_share))


@flow(name="tools")
def tools_flow(out: str, tools: str, n: int = 100, seed: int = 0, engine: dict | None = None,
               functions: str | None = None, python_path: str | None = None, examples: str | None = None,
               max_tools: int = 3, parallel_share: float = 0.5, options: dict | None = None,
               max_failure_rate: float = 0.1, gpus: float = 0.0) -> str:
    """Function-calling data for the tools in `tools` into `out` (APIGen's format, execution with `functions`, and
    semantic checks); returns the export's path. `options` are reasoning.tools_steps' keyword arguments."""
    with writer_lock(Path(out)):
        python_path = str(Path(python_path or ".").resolve()) if functions else None
        steps = reasoning.tools_steps(functions=functions, python_path=python_path,
                                    functions_hash=reasoning.functions_source(functions, python_path), **(options or {}))
        source = tools_plan_task.submit(out, tools, n, seed, examples, max_tools, parallel_share).result()
        last = run_steps(out, steps, source, engine=engine_json(engine), max_failure_rate=max_failure_rate, gpus=gpus)
        return str(recipes.export_parquet(Path(out), Path(last), card="Function-calling data (APIGen checks)"))
