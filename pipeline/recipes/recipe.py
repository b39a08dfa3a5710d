"""Users' recipes: a YAML file of steps in order, each a built-in stage by name (pipeline.recipes.registry) or the
user's own function (`mypkg.stages:my_filter`), with engines defined once by name; checked whole before any model
loads and compiled into the same Steps the built-in jobs are made of, so the runner gives them the same guarantees
(shards, atomic writes, resume, drop reasons, engine failures, replicas, code hashes in the identity).

    title: My data                      # the dataset card's title
    input: data.jsonl                   # the user's data (relative to the recipe file), or
    plan: {n: 100, seed: 0}             # Magpie's empty records to fill
    engines:                            # EngineSpec.make's keyword arguments, defined once
      local: {backend: llamacpp, model: smollm2}
      judge: {backend: openai-chat, model: gpt-4o-mini, options: {api_key_env: OPENAI_API_KEY}}
    engine: local                       # the engine of steps that name none
    steps:
      - stage: magpie.synthesize        # `aligndata recipe stages` lists them with their parameters
        params: {max_tokens: 256}
      - stage: judge
        engine: judge
        params: {rubric: "...", aspects: {helpfulness: "...", honesty: "..."}}
      - stage: mypkg.stages:my_filter   # (frame, *, engine=..., **params) -> frame
        shard_size: 64
        engines: {target: local}        # more models by role

The file's structure is validated with pydantic (a maintained validator whose errors name the field); names,
parameters (against each function's signature and type hints), engine references, filter specs and prompt templates
are checked by `compile_recipe`, each error one line naming the step and the valid choices (pipeline.recipes.recipe_jobs
writes the built-in jobs as such files and runs them). Modules beside the recipe file are importable (also by the
replicas of a local Ray cluster started afterwards; on a remote cluster, install them there).
"""
from __future__ import annotations

import difflib
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pipeline.core.codehash import code_hash
from pipeline.core.inputs import FORMATS
from pipeline.core.rundir import RUN_NAME
from pipeline.core.secrets import redact
from pipeline.engines import BACKENDS, EngineSpec
from pipeline.recipes import registry
from pipeline.recipes.steps import Step

RESERVED = ("input", "plan", "export", "report")  # run directory entries that are not steps


class RecipeError(ValueError):
    """A recipe that cannot run; the message is one line naming the file, the step and what is valid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineBlock(_Strict):
    backend: str
    model: str = "smollm2"
    base_url: str | None = None
    template: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PlanBlock(_Strict):
    n: int = Field(gt=0)
    seed: int = 0


class StepBlock(_Strict):
    stage: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    shard_size: int | None = Field(default=None, gt=0)  # left out: the stage's default; null: the whole input
    engine: str | None = None
    engines: dict[str, str] = Field(default_factory=dict)
    computes: list[str] | None = None


class RecipeFile(_Strict):
    title: str = "Curated alignment data"
    input: str | None = None
    format: str | None = None
    plan: PlanBlock | None = None
    engines: dict[str, EngineBlock] = Field(default_factory=dict)
    engine: str | None = None
    steps: list[StepBlock] = Field(min_length=1)


@dataclass(frozen=True)
class Recipe:
    """A checked recipe: its steps, the engine of steps that name none, and its source (an input path and format,
    or a Magpie plan's n and seed)."""

    steps: list[Step]
    engine: EngineSpec | None
    title: str
    input: Path | None = None
    format: str | None = None
    plan: tuple[int, int] | None = None


def load_recipe(path: Path) -> Recipe:
    """The checked recipe in the YAML file at `path`; RecipeError (one line) for anything that would not run."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RecipeError(f"{path}{f', line {mark.line + 1}' if mark else ''}: not valid YAML "
                          f"({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with steps: (and input: or plan:, engines:, engine:)")
    try:
        parsed = RecipeFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise RecipeError(f"{path}: {where or 'recipe'}: {first['msg']}{more}") from None
    _importable_first(str(path.resolve().parent))
    return compile_recipe(parsed, where=str(path), base=path.resolve().parent)


_RECIPE_FOLDER: list[str] = []  # the folder put first by the last recipe loaded in this process


def _importable_first(folder: str) -> None:
    """A user's stage module beside the recipe imports like a script's sibling: its folder first on sys.path, here and
    in the processes started after (a local Ray cluster's replicas, through PYTHONPATH), in place of the folder of a
    recipe loaded before (a long-lived process must not find another recipe's `stages.py` first)."""
    stale = set(_RECIPE_FOLDER) | {folder}
    sys.path[:] = [folder, *(p for p in sys.path if p not in stale)]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in stale]
    os.environ["PYTHONPATH"] = os.pathsep.join([folder, *inherited])
    _RECIPE_FOLDER[:] = [folder]


def compile_recipe(recipe: RecipeFile, *, where: str = "recipe", base: Path = Path(".")) -> Recipe:
    """Check every name, parameter and engine reference of `recipe` and build its Steps; RecipeError otherwise."""
    def fail(message: str):
        raise RecipeError(f"{where}: {message}")

    if (recipe.input is None) == (recipe.plan is None):
        fail("give the rows' source: input: PATH (your data) or plan: {n: N, seed: S} (Magpie's empty records), one")
    if recipe.format is not None and recipe.format not in FORMATS:
        fail(f"format {recipe.format!r} is not one of {list(FORMATS)}")
    specs = {name: _engine(name, block, fail) for name, block in recipe.engines.items()}
    if recipe.engine is not None and recipe.engine not in specs:
        fail(f"engine {recipe.engine!r} is not defined; defined: {', '.join(specs) or 'none (add engines:)'}")
    steps, names = [], set()
    for number, block in enumerate(recipe.steps, 1):
        step = _compile_step(number, block, specs, recipe.engine, names, fail)
        names.add(step.name)
        steps.append(step)
    source = Path(recipe.input) if recipe.input is not None else None
    return Recipe(steps, specs[recipe.engine] if recipe.engine else None, recipe.title,
                  input=(source if source.is_absolute() else base / source) if source else None, format=recipe.format,
                  plan=(recipe.plan.n, recipe.plan.seed) if recipe.plan else None)


def _engine(name: str, block: EngineBlock, fail) -> EngineSpec:
    if block.backend not in BACKENDS:
        fail(f"engines.{name}: unknown backend {block.backend!r}; valid: {', '.join(BACKENDS)}")
    spec = EngineSpec.make(**block.model_dump())
    if redact(spec.describe()) != spec.describe():
        fail(f"engines.{name}: an option holds a secret, which would be written with the run. Put the key in an "
             "environment variable and name it: options: {api_key_env: NAME}")
    return spec


def _compile_step(number: int, block: StepBlock, specs: dict, default: str | None, taken: set, fail) -> Step:
    stage = registry.stages().get(block.stage)
    if stage is None and ":" not in block.stage:
        fail(f"step {number}: unknown stage {block.stage!r}{_suggestion(block.stage)}; valid: "
             f"{', '.join(registry.stages())}, or your function as module:function")
    path = stage.path if stage else block.stage
    stage = stage or next((s for s in registry.stages().values() if s.path == path), None)  # a built-in by its path
    try:
        function = registry.load_function(path)
    except (ImportError, AttributeError) as exc:
        fail(f"step {number}: cannot import {path!r} ({type(exc).__name__}: {exc}); a module beside the recipe file or "
             "installed in this environment is importable")
    if not callable(function):
        fail(f"step {number}: {path!r} is not a function")
    name = block.name or free_name((stage.name if stage else path.rpartition(":")[2]).replace(".", "-"), taken)
    label = f"step {number} {name!r} ({stage.name if stage else path})"
    if not RUN_NAME.fullmatch(name) or name in RESERVED or name in taken:
        fail(f"{label}: the name must be a new directory name (letters, digits, '.', '_', '-'), not "
             f"{', '.join(RESERVED)} or an earlier step's")
    params = _checked_params(block, function, stage, label, fail)
    uses_engine = registry.uses_engine(function)
    named = ([("engine", block.engine)] if block.engine else []) + list(block.engines.items())
    for role, engine in named:
        if engine not in specs:
            fail(f"{label}: {role} {engine!r} is not defined; defined: {', '.join(specs) or 'none (add engines:)'}")
    if uses_engine and not (block.engine or default):
        fail(f"{label} needs an engine: name one with engine: (defined: {', '.join(specs) or 'none'}) or set the "
             "recipe's engine:")
    if block.engine and not uses_engine:
        fail(f"{label} takes no engine; remove its engine:")
    return Step(name, path, params, uses_engine=uses_engine,
                shard_size=block.shard_size if "shard_size" in block.model_fields_set else
                (stage.shard_size if stage else registry.DEFAULT_SHARD_SIZE),
                computes=tuple(block.computes if block.computes is not None else (stage.computes if stage else ())),
                engine=specs[block.engine].to_json() if block.engine else None,
                engines={role: specs[engine].to_json() for role, engine in block.engines.items()})


def _suggestion(unknown: str) -> str:
    """A hint for an unknown stage name: the stage a built-in job's step of that name runs (`magpie.instructions`:
    the magpie job's step `instructions`), else the closest stage name."""
    import json

    parts = unknown.split(".")
    wanted = {unknown.replace(".", "-"), parts[-1], "-".join(parts[1:]), "-".join(parts[::-1])}
    for job in registry.JOBS:
        for step in registry.job_steps(job):
            if step.name in wanted:
                given = json.dumps(step.params)
                with_params = f" with params {given}" if step.params and len(given) <= 60 else ""
                return f" (did you mean {registry.name_of(step.stage)!r}? the {job} job's step {step.name!r} runs it{with_params})"
    close = difflib.get_close_matches(unknown, registry.stages(), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def free_name(name: str, taken: set) -> str:
    """`name`, or `name-2`, `name-3`, ... when an earlier step has it."""
    return next(candidate for n in range(1, len(taken) + 2) if (candidate := name if n == 1 else f"{name}-{n}") not in taken)


def _checked_params(block: StepBlock, function, stage, label: str, fail) -> dict:
    params, roles, open_ended = registry.parameters(function)
    known = {p.name: p for p in params}
    for role in block.engines:
        if role not in roles and not (stage is None and role in known and role not in block.params):
            fail(f"{label}: engines: {role!r} is not an engine role of this stage; its roles: {', '.join(roles) or 'none'}")
    for key in block.params:
        if key in roles:
            fail(f"{label}: {key!r} is an engine role: name an engine under engines: {{{key}: NAME}}")
        if key not in known and not open_ended:
            close = difflib.get_close_matches(key, known, n=1)
            fail(f"{label}: unknown parameter {key!r}{f' (did you mean {close[0]!r}?)' if close else ''}; valid: "
                 f"{', '.join(known) or 'none'}")
    missing = [p.name for p in params if p.required and p.name not in block.params and p.name not in block.engines]
    if missing:
        fail(f"{label}: missing parameter(s) {', '.join(missing)}")
    _check_types(function, block.params, label, fail)
    checked = dict(block.params)
    try:
        _check_generic(stage.name if stage else None, checked)
    except ValueError as exc:
        fail(f"{label}: {str(exc).splitlines()[0]}")
    return checked


def _check_types(function, params: dict, label: str, fail) -> None:
    """Each value against the parameter's type hint, where the hint can be checked (pydantic's lax mode: 3 is a
    float, a list is a tuple); unresolvable hints are left to the stage."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - a hint naming what only type checkers import
        return
    for key, value in params.items():
        if key not in hints:
            continue
        try:
            adapter = TypeAdapter(hints[key])
        except Exception:  # noqa: BLE001 - a type pydantic cannot build a validator for (an array, an Engine)
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            fail(f"{label}: parameter {key}: {exc.errors()[0]['msg']} (got {value!r})")


def _check_generic(name: str | None, params: dict) -> None:
    """The checks of the stages whose parameters are languages of their own: filter specs, prompt templates,
    rubrics, schemas. A pydantic model named as a generate schema puts its module's code hash in the parameters,
    so editing the model recomputes the step."""
    if name in ("filter", "filters.mark"):
        import filters
        from pipeline.core.records import empty

        spec = params.get("spec")
        if name == "filter" and (spec is None) == (params.get("where") is None):
            raise ValueError("filter takes spec: [filter names or {name, ...}] or where: 'SQL expression', exactly one")
        for _, keep in filters._resolve(spec if spec is not None else [{"name": "where", "sql": params["where"]}]):
            try:
                empty().filter(keep)  # names a column the records do not have?
            except Exception as exc:  # noqa: BLE001 - Polars' errors name the column; one line of it
                raise ValueError(f"filter: {str(exc).splitlines()[0]}") from None
    elif name == "generate":
        from pipeline.synth.generate import check_params, load_schema

        check_params(**params)
        if isinstance(params.get("schema"), str):
            params["schema_code"] = code_hash(load_schema(params["schema"])[1])
    elif name == "judge":
        from pipeline.score.judge import check_params

        check_params(**params)

