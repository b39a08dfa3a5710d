"""The curate flow: dedup, embeddings, deita scores, and diverse selection or information-theoretic subsampling."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.tasks import engine_json, input_task, run_steps
from pipeline import recipes
from pipeline.core.rundir import writer_lock


@flow(name="curate")
def curate_flow(out: str, source: str | None = None, input_path: str | None = None, engine: dict | None = None,
                options: dict | None = None, max_failure_rate: float = 0.1, gpus: float = 0.0,
                replicas: int = 1, ray_address: str | None = None) -> str:
    """Curate the stage directory `source` (a previous flow's output) or the user's data at `input_path`;
    returns the stage directory of the selected rows, in selection order.

    `options` are recipes.curate_steps' keyword arguments (k, tau, dedup, selector, score_mode, ...).
    """
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused
        if (source is None) == (input_path is None):
            raise ValueError("pass exactly one of source (a stage directory) or input_path (your data)")
        source = source or input_task.submit(out, input_path).result()  # on the task runner, like every step
        steps = recipes.curate_steps(**(options or {}))
        return run_steps(out, steps, source, engine=engine_json(engine), max_failure_rate=max_failure_rate, gpus=gpus,
                         replicas=replicas, ray_address=ray_address)
