"""The end-to-end flow: synthesize → curate → publish as subflows, then the run report.

`aligndata run` runs it on the offline default model; prefect.yaml schedules it on GPU workers.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.curate import curate_flow
from flows.publish import publish_flow
from flows.synthesize import synthesize_flow
from flows.tasks import ray_runner
from pipeline.core import rundir
from pipeline.ship import report


@task(cache_policy=NO_CACHE)
def report_task(out: str) -> str:
    return str(report.write(Path(out)))


@flow(name="end-to-end")
def end_to_end_flow(out: str, method: str = "magpie", n: int = 24, seed: int = 0, seeds: str | None = None,
                    engine: dict | None = None, scorer: dict | None = None, synthesize: dict | None = None,
                    curate: dict | None = None,
                    title: str = "Alignment data", repo_id: str | None = None, token_env: str = "HF_TOKEN",
                    ray_address: str | None = None, gpus: float = 0.0, max_failure_rate: float = 0.1) -> dict:
    """Synthesize, curate and publish into the run directory `out`; returns rundir.summarize() with the outputs.

    `engine` (EngineSpec.make's keyword arguments; default SmolLM2 on vLLM) synthesizes; `scorer` scores in the
    curate flow (default: `engine`). `synthesize` and `curate` are the keyword arguments of the synthesis
    method's steps and of recipes.curate_steps. With `ray_address` ("local" starts a Ray cluster on this machine) the synthesize and curate subflows run on a
    RayTaskRunner, engine steps with `gpus` GPUs each.
    """
    synth, cur = synthesize_flow, curate_flow
    if ray_address:  # each subflow gets its own runner (a runner is entered and left by one flow run)
        address = None if ray_address == "local" else ray_address
        synth, cur = synth.with_options(task_runner=ray_runner(address)), cur.with_options(task_runner=ray_runner(address))
    conversations = synth(out, method=method, n=n, seed=seed, seeds=seeds, engine=engine, options=synthesize,
                          max_failure_rate=max_failure_rate, gpus=gpus)
    selected = cur(out, source=conversations, engine=scorer or engine, options=curate, max_failure_rate=max_failure_rate, gpus=gpus)
    published = publish_flow(out, source=selected, title=title, repo_id=repo_id, token_env=token_env)
    return rundir.summarize(Path(out)) | {"export": published["data"], "trainer": published["trainer"],
                                        "push": published["push"], "report": report_task(out)}
