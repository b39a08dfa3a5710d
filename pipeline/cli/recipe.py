"""`aligndata recipe`: run, check and write YAML recipes of built-in and your own stages (pipeline.recipes.recipe),
and list the built-in stages with their parameters, read from their functions' signatures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (API_KEY_ENV, BASE_URL, ENGINE, MODEL, OPTION, SALVAGE, STRICT, TEMPLATE, Backend, choice,
                                 console, engine_spec, fail, key_values, run_job)
from pipeline.recipes import registry
from pipeline.recipes.recipe import Recipe, RecipeError, load_recipe
from pipeline.recipes.recipe_jobs import job_recipe

recipe_app = typer.Typer(no_args_is_help=True, help="Your own pipelines: YAML recipes of built-in stages and your own "
                                                    "functions, checked before any model loads.")
JobName = choice(registry.JOBS)
RECIPE = typer.Argument(..., help="The recipe file (YAML).")


def _load(path: Path) -> Recipe:
    try:
        return load_recipe(path)
    except RecipeError as exc:
        raise fail(exc) from exc


@recipe_app.command("run")
def run(
    recipe: Path = RECIPE,
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    input: Optional[Path] = typer.Option(None, help="Your data, instead of the recipe's input: or plan:."),
    recompute: bool = typer.Option(False, "--recompute", help="Recompute a step whose code, parameters, model or input "
                                                              "changed since it was written (deleting it and the steps "
                                                              "after it); default: refuse, naming it."),
    max_failure_rate: float = typer.Option(0.1, help="Stop when more than this share of a shard fails in the engine."),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """Run a recipe: its source, each step in order (resumable, shard by shard), Parquet export and dataset card."""
    checked = _load(recipe)
    run_job("recipe_job", out, recipe=checked, input_path=input, strict=strict, salvage=salvage,
            max_failure_rate=max_failure_rate, recompute=recompute)


@recipe_app.command("check")
def check(recipe: Path = RECIPE) -> None:
    """Check every stage, parameter, engine, filter and template of a recipe without loading a model."""
    checked = _load(recipe)
    source = f"input {checked.input}" if checked.input else f"plan n={checked.plan[0]} seed={checked.plan[1]}"
    console.print(f"{recipe}: ok, {len(checked.steps)} steps from {source}", soft_wrap=True)
    for step in checked.steps:
        engines = {"engine": step.engine or (checked.engine.to_json() if checked.engine else None)} if step.uses_engine else {}
        engines |= step.engines
        used = ", ".join(f"{role}: {json.loads(spec)['backend']} {json.loads(spec)['model']}"
                         for role, spec in engines.items() if spec)
        console.print(f"  {step.name:>22}  {registry.name_of(step.stage) or step.stage}"
                      f"  shard_size={step.shard_size}{f'  ({used})' if used else ''}", soft_wrap=True)


@recipe_app.command("show")
def show(
    job: JobName = typer.Argument(..., help="A built-in job."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    set_: list[str] = typer.Option([], "--set", help="An option of the job's step builder, KEY=VALUE (JSON value), "
                                                     "e.g. --set k=500 --set 'dedup=[\"exact\"]' (repeatable)."),
) -> None:
    """Print a built-in job as a recipe you can copy and edit (from the job's own step builder)."""
    try:
        text = job_recipe(job, engine=engine_spec(engine, model, base_url, template, option, api_key_env),
                          options=key_values(set_, "--set"))
    except (RecipeError, ValueError) as exc:
        raise fail(exc) from exc
    typer.echo(text, nl=False)


@recipe_app.command("stages")
def stages() -> None:
    """List every built-in stage: its function, what it does, its parameters with defaults and its engine roles."""
    for stage in registry.stages().values():
        try:
            function = stage.function()
        except (ImportError, AttributeError) as exc:  # a job names a stage whose module cannot load here: say so
            typer.echo(f"{stage.name}  ({stage.path}; cannot be imported here: {exc})")
            continue
        params, roles, _ = registry.parameters(function)
        doc = " ".join((function.__doc__ or "").strip().split("\n\n")[0].split())
        engine = "engine" if registry.uses_engine(function) else "no engine"
        whole = "whole input" if stage.shard_size is None else f"shard_size {stage.shard_size}"
        typer.echo(f"{stage.name}  ({stage.path}; {engine}; {whole}"
                   f"{'; roles: ' + ', '.join(roles) if roles else ''}"
                   f"{'; computes: ' + ', '.join(stage.computes) if stage.computes else ''})")
        if doc:
            typer.echo(f"    {doc}")
        for p in params:
            typer.echo(f"    {p.name}: {p.annotation or 'any'}" + (" (required)" if p.required else f" = {p.default!r}"))
