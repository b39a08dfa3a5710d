"""The mine flow: a method over the user's data (WildFeedback pairs, BLEUBERI selection, overlap audit, honesty data,
URIAL answers, Mixture-of-Instructions packing)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.tasks import engine_json, input_task, run_steps
from pipeline import recipes
from pipeline.core.rundir import writer_lock


@flow(name="mine")
def mine_flow(out: str, input_path: str, method: str, engine: dict | None = None, options: dict | None = None,
              max_failure_rate: float = 0.1, gpus: float = 0.0) -> str:
    """Run `method` (recipes.MINING_METHODS) over the data at `input_path` into the run directory `out`; returns the
    last stage directory. `options` are the keyword arguments of recipes.mining_steps(method) (e.g. k and mode for
    bleuberi, against for audit, system_prompts for moi); `engine` is EngineSpec.make's keyword arguments (default SmolLM2 on vLLM)."""
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused
        steps = recipes.mining_steps(method, **(options or {}))
        source = input_task.submit(out, input_path).result()
        return run_steps(out, steps, source, engine=engine_json(engine), max_failure_rate=max_failure_rate, gpus=gpus)
