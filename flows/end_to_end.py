"""The end-to-end flow: synthesize → curate → publish as subflows, then the run report and, with a corpus, the
addition of the run's selected rows to it.

`aligndata run` runs it on the offline default model; prefect.yaml schedules it on GPU workers, each night into
its own run directory under `runs` (named by the scheduled date, seeded from it).
"""
from __future__ import annotations

from datetime import timezone
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.curate import curate_flow
from flows.publish import publish_flow
from flows.synthesize import synthesize_flow
from flows.tasks import ray_runner
from pipeline.core import rundir
from pipeline.recipes.budget import spending
from pipeline.ship import corpus as corpora
from pipeline.ship import report

RUN_NAME_FORMAT = "%Y-%m-%d"  # one run per scheduled day (UTC); pass run_name for more than one a day


@task(cache_policy=NO_CACHE)
def report_task(out: str) -> str:
    return str(report.write(Path(out)))


@task(cache_policy=NO_CACHE)
def corpus_task(out: str, corpus: str, repo_id: str | None, token_env: str, title: str) -> dict:
    """Add the run's export to the corpus (a no-op if it is there already) and push what the Hub lacks."""
    entry = corpora.add(Path(out), Path(corpus), title=title)
    pushed = corpora.publish(Path(corpus), repo_id, token_env=token_env, title=title) if repo_id else []
    return {"addition": entry["number"], "already": bool(entry.get("already")), "rows_added": entry["rows_added"],
            "corpus_rows": entry["corpus_rows"], "commits": [p["commit"] for p in pushed]}


def run_directory(out: str | None, runs: str | None, run_name: str | None, seed: int) -> tuple[str, int]:
    """The flow run's directory and seed: `out` and `seed` as given, or for a scheduled run RUNS/<name> with the
    seed derived from (seed, name), where the name is `run_name` or the flow run's scheduled date (UTC). A retry
    or a manual re-run of the same date therefore resumes that night's directory; DIR/run.json records it."""
    if (out is None) == (runs is None):
        raise ValueError("pass out (a run directory) or runs (the base directory of scheduled runs), exactly one")
    if out is not None:
        return out, seed
    from prefect.runtime import flow_run

    scheduled = flow_run.scheduled_start_time.astimezone(timezone.utc)
    path, derived = rundir.scheduled_run(Path(runs), run_name or scheduled.strftime(RUN_NAME_FORMAT), seed)
    rundir.record_run(path, {"run": path.name, "seed": derived, "base_seed": seed, "scheduled": scheduled.isoformat(),
                             "flow_run": str(flow_run.id), "flow_run_name": flow_run.name})
    return str(path), derived


@flow(name="end-to-end")
def end_to_end_flow(out: str | None = None, runs: str | None = None, run_name: str | None = None, method: str = "magpie",
                    n: int = 24, seed: int = 0, seeds: str | None = None,
                    engine: dict | None = None, scorer: dict | None = None, synthesize: dict | None = None,
                    curate: dict | None = None,
                    title: str = "Alignment data", repo_id: str | None = None, token_env: str = "HF_TOKEN",
                    ray_address: str | None = None, gpus: float = 0.0, replicas: int = 1, max_failure_rate: float = 0.1,
                    corpus: str | None = None, corpus_repo_id: str | None = None, max_cost: float | None = None,
                    prices: str | None = None, allow_unscrubbed: bool = False) -> dict:
    """Synthesize, curate and publish into the run directory `out`, or for scheduled runs into RUNS/<scheduled date>
    with a seed derived from `seed` and the date (see run_directory); returns rundir.summarize() with the outputs.

    `engine` (EngineSpec.make's keyword arguments; default SmolLM2 on vLLM) synthesizes; `scorer` scores in the
    curate flow (default: `engine`). `synthesize` and `curate` are the keyword arguments of the synthesis
    method's steps and of recipes.curate_steps. With `ray_address` ("local" starts a Ray cluster on this machine) the synthesize and curate subflows run on a
    RayTaskRunner, engine steps with `gpus` GPUs each; with `replicas` > 1 each engine step instead spreads its
    shards over that many engine replicas (one GPU each on GPU hosts; on the cluster at `ray_address`, else a local
    one). With `corpus` (a directory), the run's selected rows are then
    added to that growing corpus, deduplicated against it, and with `corpus_repo_id` the addition is pushed.
    `max_cost` (USD) stops the run, resumable, before an engine window would pass it, at the bundled prices or those
    of the YAML file `prices` (pipeline.recipes.budget; tasks on Ray workers are priced but not held to it).
    The push refuses rows imported from users' data that no PII pass went over unless `allow_unscrubbed`.
    """
    out, seed = run_directory(out, runs, run_name, seed)
    with rundir.writer_lock(Path(out)), spending(prices, max_cost):  # one writer per run directory
        synth, cur = synthesize_flow, curate_flow
        if ray_address:  # each subflow gets its own runner (a runner is entered and left by one flow run)
            address = None if ray_address == "local" else ray_address
            synth, cur = synth.with_options(task_runner=ray_runner(address)), cur.with_options(task_runner=ray_runner(address))
        conversations = synth(out, method=method, n=n, seed=seed, seeds=seeds, engine=engine, options=synthesize,
                              max_failure_rate=max_failure_rate, gpus=gpus, replicas=replicas, ray_address=ray_address)
        selected = cur(out, source=conversations, engine=scorer or engine, options=curate, max_failure_rate=max_failure_rate,
                       gpus=gpus, replicas=replicas, ray_address=ray_address)
        published = publish_flow(out, source=selected, title=title, repo_id=repo_id, token_env=token_env,
                                 allow_unscrubbed=allow_unscrubbed)
        summary = rundir.summarize(Path(out)) | {"run_dir": out, "seed": seed, "export": published["data"],
                                                 "trainer": published["trainer"], "push": published["push"],
                                                 "report": report_task(out)}
        if corpus:
            summary["corpus"] = corpus_task(out, corpus, corpus_repo_id, token_env, title)
        return summary
