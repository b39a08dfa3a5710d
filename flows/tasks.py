"""Thin Prefect tasks: a path in, one pipeline call, a path out. The library does the work and writes the manifest.

A step task is cached across flow runs on its inputs (run directory, step with its parameters, engine spec), the
task's source, and `_step_identity`: the content fingerprint of its input shards, the code hash of its stage (the
stage's module and the project modules it imports) and the revision of each model it uses. The cache record and the
result live in the step's own stage directory, so deleting that directory, changing its input, upgrading the code
it runs or the weights it loads recomputes it; steps whose code and input did not change stay cached.
Within a step, finished shards are skipped by the runner, which is what makes a killed run resume.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy

from pipeline import recipes
from pipeline.core.codehash import code_hash
from pipeline.engines import EngineSpec
from pipeline.engines.models import model_revision
from pipeline.recipes.replicas import replicas as engine_replicas
from pipeline.recipes.runner import fingerprint
from pipeline.core.rundir import stage_complete
from pipeline.core.secrets import redact


def _as_step(step: dict) -> recipes.Step:
    """A Step back from the dict a task receives (Prefect hands tuples over as lists)."""
    return recipes.Step(**{**step, "computes": tuple(step.get("computes", ()))})


def _step_identity(context, parameters: dict) -> str:
    step = _as_step(parameters["step"])
    specs = [s for s in (parameters["engine"], step.engine, *step.engines.values()) if s]
    revisions = [model_revision(spec.backend, spec.model) for spec in map(EngineSpec.from_json, specs)]
    return ":".join([fingerprint(Path(parameters["source"])), code_hash(step.function()), *map(str, revisions)])


# How many replicas ran a step does not change its rows, so it is not part of the cache key.
STEP_CACHE = (INPUTS - "replicas" - "ray_address") + TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_step_identity)


@task(task_run_name="{step[name]}", cache_policy=STEP_CACHE, persist_result=True)
def step_task(out: str, step: dict, source: str, engine: str | None, max_failure_rate: float, replicas: int = 1,
              ray_address: str | None = None) -> str:
    """Run one pipeline step (a recipes.Step as a dict) on the stage directory `source`; returns its stage directory.
    With `replicas` > 1 its engine stage runs on that many engine replicas on the Ray cluster at `ray_address`."""
    spec = EngineSpec.from_json(engine) if engine else None
    with engine_replicas(replicas, ray_address or "local") if replicas > 1 else contextlib.nullcontext():
        return str(recipes.run_step(Path(out), _as_step(step), Path(source), engine=spec, max_failure_rate=max_failure_rate))


def run_steps(out: str, steps: list[recipes.Step], source: str, *, engine: str | None, max_failure_rate: float,
              gpus: float = 0.0, replicas: int = 1, ray_address: str | None = None) -> str:
    """Submit `steps` one after another (each reads the previous one's output) to the flow's task runner.

    With `gpus` > 0 and a RayTaskRunner, steps that use the engine are placed on GPU workers through
    `remote_options(num_gpus=gpus)`; the others take no GPU. With `replicas` > 1 an engine step spreads its shards
    over that many engine replicas (Ray actors, one GPU each where the cluster has GPUs) instead.

    A cache hit counts only when the step's shards are all there as its manifest recorded them (rundir.stage_complete):
    otherwise the step runs again with a refreshed cache, and the runner redoes the missing shards only.
    """
    for step in steps:
        cache_dir = Path(out) / step.name / ".prefect"
        runnable = step_task.with_options(cache_policy=STEP_CACHE.configure(key_storage=cache_dir / "keys"),
                                          result_storage=cache_dir / "results")
        args = (out, asdict(step), source, engine if step.uses_engine else None, max_failure_rate,
                replicas if step.uses_engine else 1, ray_address)
        with _placement(gpus if step.uses_engine and replicas <= 1 else 0.0):
            source = runnable.submit(*args).result()
            if not stage_complete(Path(source)):  # a cached step whose shards were deleted since: redo what is missing
                source = runnable.with_options(refresh_cache=True).submit(*args).result()
    return source


def _placement(gpus: float):
    if not gpus:
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_gpus=gpus)


@task(cache_policy=NO_CACHE)
def plan_task(out: str, n: int, seed: int) -> str:
    """The Magpie plan: `n` empty records (rewritten identically on a resume)."""
    return str(recipes.write_plan(Path(out), n=n, seed=seed))


@task(cache_policy=NO_CACHE)
def input_task(out: str, path: str, fmt: str | None = None) -> str:
    """The user's seeds or data as records in DIR/input."""
    return str(recipes.write_input(Path(out), Path(path), fmt))


def engine_json(engine: dict | None) -> str:
    """EngineSpec JSON from EngineSpec.make's keyword arguments (prefect.yaml's engine blocks); default SmolLM2 on vLLM.

    Flow parameters are stored by the Prefect API and shown in its UI, so secrets belong in the worker's environment
    (options: {api_key_env: NAME}); a secret in the options stops the run here, before any task, log or file has it.
    """
    spec = EngineSpec.make(**(engine or {"backend": "vllm"}))
    if redact(spec.describe()) != spec.describe():
        raise ValueError("an engine option holds a secret, which Prefect stores with the flow run's parameters. Put the "
                         "key in an environment variable of the worker and pass its name: options: {api_key_env: NAME}")
    return spec.to_json()


def ray_runner(address: str | None = None):
    """A RayTaskRunner: `address` of an existing Ray cluster ("auto", "ray://host:10001"), or None to start a local one."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ImportError("the Ray task runner needs prefect-ray: pip install 'aligndata[ray]'") from exc
    return RayTaskRunner(address=address, init_kwargs={"include_dashboard": False} if address is None else {})
