"""The built-in stages by name, and the built-in jobs whose step builders they come from; nothing here defines a stage
or a job a second time.

JOBS names each job's step builder (curate_steps, magpie_steps, ...). The stages are what those builders produce:
their steps at the builders' defaults, the steps of a few more builder calls (MCTS's datasets, I-SHEEP, Guide-Align),
and every `Step(..., "module:function", ...)` written in a job module (pipeline/recipes/*.py, read with `ast`), which
catches steps behind an option that is off by default: a step a job gains appears here without an edit. The
generic stages (generate, judge, filter) are the ones no job uses. A stage's name is where its function lives: the
last part of its module and the function (`deita.score`, `selection.dedup`), or the module alone when the function
has its name (`embed`, `isa`); its default shard size and the columns it computes (whose nulls are counted) are the
builders' (None, the whole input in one shard, where any builder passes None: dedup, selection, global filters).
A stage's parameters and engine roles come from its function's signature (`parameters`), so listings cannot drift.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

from pipeline.recipes.audit import audit_step
from pipeline.recipes.codeclm import codeclm_steps
from pipeline.recipes.curate import curate_steps
from pipeline.recipes.magpie import magpie_steps
from pipeline.recipes.magpie_tools import magpie_dpo_steps, magpie_extend_steps, magpie_filter_steps
from pipeline.recipes.mcts import MCTS_DATASETS, mcts_dataset_step, mcts_search_step
from pipeline.recipes.mining import bleuberi_steps, feedback_steps, moi_step
from pipeline.recipes.reasoning import distill_steps
from pipeline.recipes.selfalign import guideline_library_steps, honesty_steps, isheep_steps, urial_step
from pipeline.recipes.steps import Step
from pipeline.recipes.tag import tag_steps

DEFAULT_SHARD_SIZE = Step.__dataclass_fields__["shard_size"].default


@dataclass(frozen=True)
class Job:
    """A built-in job as a recipe: its step builder, where its rows come from ("input": the user's data, "plan":
    Magpie's empty records) and the options the builder requires, shown as placeholders the user edits."""

    build: Callable[..., list[Step]]
    source: str = "input"
    required: tuple[tuple[str, object], ...] = ()
    title: str = "Curated alignment data"


JOBS: dict[str, Job] = {
    "curate": Job(curate_steps),
    "magpie": Job(magpie_steps, source="plan", title="Magpie conversations"),
    "tag": Job(tag_steps),
    "magpie-filter": Job(magpie_filter_steps),
    "magpie-dpo": Job(magpie_dpo_steps),
    "magpie-extend": Job(magpie_extend_steps),
    "codeclm": Job(codeclm_steps),
    "mcts": Job(lambda **options: [mcts_search_step(**options), mcts_dataset_step("sft")]),
    "feedback": Job(feedback_steps),
    "bleuberi": Job(bleuberi_steps, required=(("k", 1000),)),
    "honesty": Job(honesty_steps),
    "urial": Job(lambda **options: [urial_step(**options)]),
    "audit": Job(lambda **options: [audit_step(**options)], required=(("against", "reference.jsonl"),)),
    "moi": Job(lambda **options: [moi_step(**options)], required=(("system_prompts", {"general": "You are a helpful assistant."}),)),
    "distill": Job(distill_steps, title="Verified reasoning traces"),
}
# Builders that are not a linear job (a loop, two phases, one of several datasets) but whose stages users may chain.
MORE_STEPS: tuple[Callable[[], list[Step]], ...] = (
    lambda: [mcts_dataset_step(name) for name in MCTS_DATASETS], isheep_steps, guideline_library_steps)
GENERIC = {"generate": "pipeline.synth.generate:generate", "judge": "pipeline.score.judge:judge",
           "filter": "filters.columns:filter_rows"}
GENERIC_COMPUTES = {"judge": ("judge_score",)}
GENERIC_WHOLE = ("filter",)  # a filter spec may compare rows (unique_instruction): the whole input, as filters.mark
STAGE_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class Stage:
    """A built-in stage: its name in recipes, its function's import path, its default shard size (None: the whole
    input) and the columns it computes."""

    name: str
    path: str
    shard_size: int | None = DEFAULT_SHARD_SIZE
    computes: tuple[str, ...] = ()

    def function(self) -> Callable:
        return load_function(self.path)


def load_function(path: str) -> Callable:
    """The function at "module:function"; ImportError or AttributeError when there is none."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def job_steps(name: str, **options) -> list[Step]:
    """The steps of built-in job `name` with the builder's `options` (its required ones defaulting to placeholders)."""
    job = JOBS[name]
    return job.build(**(dict(job.required) | options))


def _written_steps() -> list[tuple[str, dict]]:
    """(stage path, {shard_size, computes} where written as literals) of every Step call in the job modules."""
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Step"):
                continue
            stage = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "stage"), None)
            if not (isinstance(stage, ast.Constant) and isinstance(stage.value, str) and STAGE_PATH.fullmatch(stage.value)):
                continue
            known = {}
            for keyword in node.keywords:
                if keyword.arg in ("shard_size", "computes"):
                    try:
                        known[keyword.arg] = ast.literal_eval(keyword.value)
                    except ValueError:
                        pass  # a variable: the builder's own default, seen when it is called
            found.append((stage.value, known))
    return found


def _short_name(path: str) -> str:
    """A stage's name from its import path.

    >>> _short_name("pipeline.score.deita:score"), _short_name("pipeline.score.embed:embed"), _short_name("filters:mark")
    ('deita.score', 'embed', 'filters.mark')
    """
    module, _, function = path.partition(":")
    last = module.rsplit(".", 1)[-1]
    return last if function == last else f"{last}.{function}"


@cache
def stages() -> dict[str, Stage]:
    """Every built-in stage by name (see the module docstring), sorted."""
    seen: dict[str, list[dict]] = {}
    builds = [lambda job=job: job_steps(job) for job in JOBS] + list(MORE_STEPS)
    for build in builds:
        for step in build():
            seen.setdefault(step.stage, []).append({"shard_size": step.shard_size, "computes": tuple(step.computes)})
    for path, known in _written_steps():
        seen.setdefault(path, []).append(known)
    found = {}
    for path, uses in seen.items():
        sizes = [u["shard_size"] for u in uses if "shard_size" in u]
        computes = tuple(dict.fromkeys(c for u in uses for c in u.get("computes", ())))
        size = None if None in sizes else (sizes[0] if sizes else DEFAULT_SHARD_SIZE)
        found[_short_name(path)] = Stage(_short_name(path), path, size, computes)
    found |= {name: Stage(name, path, None if name in GENERIC_WHOLE else DEFAULT_SHARD_SIZE, GENERIC_COMPUTES.get(name, ()))
              for name, path in GENERIC.items()}
    return dict(sorted(found.items()))


def name_of(path: str) -> str | None:
    """The built-in name of the stage at import path `path`, or None for a user's function."""
    return next((s.name for s in stages().values() if s.path == path), None)


@dataclass(frozen=True)
class Parameter:
    name: str
    required: bool
    default: object = None
    annotation: str = ""


RUNNER_SUPPLIED = ("engine", "checkpoint")  # passed by the runner, never by a recipe


def parameters(function: Callable) -> tuple[list[Parameter], list[str], bool]:
    """(its recipe parameters, its engine roles, whether it takes **kwargs) from `function`'s signature: a role is a
    keyword parameter annotated as an Engine (a second model: target, base, optimizer, responder)."""
    params, roles, open_ended = [], [], False
    for p in list(inspect.signature(function).parameters.values())[1:]:  # the first is the frame
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
        if p.kind is p.VAR_KEYWORD:
            open_ended = True
        elif p.name in RUNNER_SUPPLIED or p.kind is p.VAR_POSITIONAL:
            continue
        elif re.search(r"\bEngine\b", annotation or ""):
            roles.append(p.name)
        else:
            params.append(Parameter(p.name, p.default is p.empty, None if p.default is p.empty else p.default,
                                    "" if p.annotation is p.empty else annotation))
    return params, roles, open_ended


def uses_engine(function: Callable) -> bool:
    """Whether the runner passes `function` the step's engine (it has an `engine` parameter)."""
    return "engine" in inspect.signature(function).parameters
