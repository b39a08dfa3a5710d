"""The recipe flow: a user's YAML recipe (pipeline.recipes.recipe) with each step as a step task, so a recipe gets
the flows' caching across runs (input fingerprint, stage code hash, model revisions) and resume, then the Parquet
export and dataset card."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.publish import export_task
from flows.tasks import input_task, plan_task, run_steps
from pipeline import recipes
from pipeline.core.rundir import StageMismatch, writer_lock
from pipeline.recipes.recipe_jobs import forget_steps


@flow(name="recipe")
def recipe_flow(out: str, recipe: str, input_path: str | None = None, recompute: bool = False,
                max_failure_rate: float = 0.1, gpus: float = 0.0, replicas: int = 1, ray_address: str | None = None) -> str:
    """Run the recipe file at `recipe` into the run directory `out` (on `input_path` instead of its own source when
    given); returns the path of the export (DIR/export/data.parquet). The recipe is checked whole before any task runs.
    A step whose identity changed since it was written (its code, parameters, model or input: the cache misses it) is
    refused, or with `recompute` deleted with the steps after it and run again."""
    checked = recipes.load_recipe(Path(recipe))
    engine = checked.engine.to_json() if checked.engine else None
    settings = dict(engine=engine, max_failure_rate=max_failure_rate, gpus=gpus, replicas=replicas, ray_address=ray_address)
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused
        if input_path or checked.input:
            source = input_task.submit(out, str(input_path or checked.input), checked.format).result()
        else:
            source = plan_task.submit(out, *checked.plan).result()
        for index, step in enumerate(checked.steps):
            try:
                source = run_steps(out, [step], source, **settings)
            except StageMismatch:
                if not recompute:
                    raise
                forget_steps(Path(out), checked.steps[index:])
                source = run_steps(out, [step], source, **settings)
        return export_task.submit(out, source, checked.title).result()
