"""The built-in jobs as recipe files (`job_recipe`, from each job's own step builder) and running a checked recipe
into a run directory (`recipe_job`, in-process: the CLI; flows/recipe.py runs the same steps as Prefect tasks)."""
from __future__ import annotations

import inspect
import json
import time
from pathlib import Path

import yaml

from pipeline.core.inputs import write_input
from pipeline.core.rundir import StageMismatch, summarize
from pipeline.engines import EngineSpec
from pipeline.recipes import registry
from pipeline.recipes.magpie import write_plan
from pipeline.recipes.recipe import Recipe, RecipeError, free_name
from pipeline.recipes.steps import Step, export_parquet, run_step


HEADER = """# The built-in job `{job}` as a recipe, written from the job's own step builder by `aligndata recipe show {job}`.
# Edit it (steps, parameters, engines), check it with `aligndata recipe check FILE`, run it with
# `aligndata recipe run FILE --out DIR`; `aligndata recipe stages` lists every stage with its parameters.
"""


def job_recipe(job: str, *, engine: EngineSpec, options: dict | None = None) -> str:
    """Built-in job `job` (registry.JOBS) on `engine` as recipe YAML, from the job's step builder with `options`;
    compiled, it gives the job's own Steps."""
    options = dict(options or {})
    if "model" in inspect.signature(registry.JOBS[job].build).parameters:
        options.setdefault("model", engine.model)  # as the job does: the model picks Magpie's sampling profile
    try:
        steps = registry.job_steps(job, **options)
    except TypeError as exc:
        raise RecipeError(f"recipe show {job}: {exc}") from None
    engines: dict[str, dict] = {}
    names: dict[str, str] = {}

    def engine_name(spec_json: str, wanted: str) -> str:
        if spec_json not in names:
            name = free_name(wanted, set(engines))
            engines[name] = {k: v for k, v in json.loads(spec_json).items() if v not in (None, {})}
            names[spec_json] = name
        return names[spec_json]

    default = engine_name(engine.to_json(), "default") if any(s.uses_engine for s in steps) else None
    blocks = []
    for step in steps:
        stage = registry.stages()[registry.name_of(step.stage)]
        block: dict = {"name": step.name, "stage": stage.name}
        if step.params:
            block["params"] = json.loads(json.dumps(step.params))
        block["shard_size"] = step.shard_size
        if tuple(step.computes) != stage.computes:
            block["computes"] = list(step.computes)
        if step.engine:
            block["engine"] = engine_name(step.engine, step.name)
        if step.engines:
            block["engines"] = {role: engine_name(spec, role) for role, spec in step.engines.items()}
        blocks.append(block)
    spec = registry.JOBS[job]
    document = {"title": spec.title, **({"plan": {"n": 32, "seed": 0}} if spec.source == "plan" else {"input": "data.jsonl"}),
                **({"engines": engines} if engines else {}), **({"engine": default} if default else {}), "steps": blocks}
    return HEADER.format(job=job) + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=110)


def recipe_job(out: Path, *, recipe: Recipe, input_path: Path | None = None, strict: bool = False, salvage: bool = False,
               max_failure_rate: float = 0.1, recompute: bool = False, on_progress=None) -> dict:
    """Run `recipe` into `out`: its source (`input_path` instead of its input when given), its steps, the Parquet export
    and card; returns summarize(). A step whose identity changed (its code, parameters, model or input) is refused, or
    with `recompute` deleted with the steps after it and computed again."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if input_path is not None or recipe.input is not None:
        stage_dir = write_input(out, Path(input_path or recipe.input), recipe.format, strict=strict, salvage=salvage)
    else:
        stage_dir = write_plan(out, n=recipe.plan[0], seed=recipe.plan[1])
    for index, step in enumerate(recipe.steps):
        on_shard = (lambda done, total, name=step.name: on_progress(name, done, total)) if on_progress else None
        run = dict(engine=recipe.engine, max_failure_rate=max_failure_rate, on_shard=on_shard)
        try:
            stage_dir = run_step(out, step, stage_dir, **run)
        except StageMismatch as exc:
            if not recompute:
                raise StageMismatch(f"{exc} (recipe run --recompute does that)") from None
            forget_steps(out, recipe.steps[index:])
            stage_dir = run_step(out, step, stage_dir, **run)
    path = export_parquet(out, stage_dir, card=recipe.title)
    return summarize(out) | {"export": str(path), "seconds": round(time.perf_counter() - started, 1)}


def forget_steps(out: Path, steps: list[Step]) -> None:
    """Delete the stage directories of `steps` in run `out` (a changed step and the ones after it, whose inputs change
    with it), their Prefect cache records included; the manifest keeps their history."""
    import shutil

    for step in steps:
        shutil.rmtree(Path(out) / step.name, ignore_errors=True)
