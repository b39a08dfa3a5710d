"""Data-parallel engine replicas on Ray: an engine stage's windows of shards spread over N actors, each holding its
own copy of the stage's models (loaded once). On GPU hosts a replica takes tensor × pipeline parallel size GPUs
(vLLM then runs its own workers inside the actor's GPUs), and the count is capped at what the cluster holds.

The driver (the process running the stage) stays the only writer: a replica returns its window's output frame and
the driver writes and logs each shard, so every shard is written exactly once, and resume works as without
replicas. A replica that dies mid-window (a killed process, a lost node, an OOM) has its window sent to another
live replica, and a new replica takes its place, up to MAX_ATTEMPTS runs of one window; a replica whose models do
not load stops the stage at once (ReplicaFailure, resumable). Engines are closed before their actor is killed.
Rows are seeded per row, so which replica made a row does not change it.

Ray actors rather than a Ray Data actor pool: the unit of work is our durable shard, written by the driver as it
completes in any order, with our own retry of a lost window; Ray Data streams its own blocks to its own sinks, and
its writes are neither atomic per shard nor resumable by our manifest.

    with replicas(2, address="local"):     # or a cluster address, e.g. "auto" or "ray://head:10001"
        run_steps(...)                      # engine stages use the replicas; other stages run here
"""
from __future__ import annotations

import contextlib
import contextvars
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import polars as pl

from pipeline.core.rundir import StageWarning

EXECUTION: contextvars.ContextVar["Replicas | None"] = contextvars.ContextVar("aligndata_replicas", default=None)


@dataclass(frozen=True)
class Replicas:
    count: int
    address: str | None = "local"  # "local": start (or join) a Ray instance on this machine


@contextlib.contextmanager
def replicas(count: int, address: str | None = "local") -> Iterator[None]:
    """Engine stages run inside this block use `count` replicas on the Ray cluster at `address` ("local": start or
    join one on this machine); with `address` None they run in this process, as without the block."""
    if count < 1:
        raise ValueError(f"replicas must be at least 1, got {count}")
    token = EXECUTION.set(Replicas(count, address) if address else None)
    try:
        yield
    finally:
        EXECUTION.reset(token)


def call_stage(stage: Callable, frame: pl.DataFrame, kwargs: dict) -> tuple[pl.DataFrame, list[str], float, dict]:
    """(the stage's output, its StageWarnings' messages, seconds, what its engines used) for one call; other warnings
    are shown as usual. What the engines used is {role: {backend, model, requests, tokens...}} (Usage)."""
    engines = {role: e for role, e in kwargs.items() if hasattr(e, "usage") and hasattr(e, "spec")}
    before = {role: engine.usage.copy() for role, engine in engines.items()}
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StageWarning)
        out = stage(frame, **kwargs)
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, StageWarning)})
    for w in caught:
        if not issubclass(w.category, StageWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    used = {role: {"backend": e.spec.backend, "model": e.spec.model, **e.usage.since(before[role]).as_dict()}
            for role, e in engines.items()}
    return out, notes, time.perf_counter() - started, used


def _connect(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address in (None, "local") else address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)


MAX_ATTEMPTS = 3  # runs of one window whose replica was lost, before the stage stops


class ReplicaFailure(RuntimeError):
    """Replicas cannot run a stage: its models do not load, they do not fit the cluster, or one window lost its
    replica MAX_ATTEMPTS times. Finished shards are kept; the same command resumes."""


def gpus_per_replica(specs) -> int:
    """GPUs one replica of a stage's models takes: the largest tensor × pipeline parallel size among its vLLM
    engines (a replica's engines share its GPUs), 0 when none is a vLLM engine.

    >>> from pipeline.engines import EngineSpec
    >>> gpus_per_replica([EngineSpec.make("vllm", "m", options={"tensor_parallel_size": 4}), EngineSpec.make("vllm", "j")])
    4
    >>> gpus_per_replica([EngineSpec.make("llamacpp")])
    0
    """
    sizes = [int(spec.opts.get("tensor_parallel_size", 1)) * int(spec.opts.get("pipeline_parallel_size", 1))
             for spec in specs if spec.backend == "vllm"]
    return max(sizes, default=0)


def _reason(exc: BaseException) -> str:
    """The last line of a Ray error that says what went wrong (Ray's messages carry a colored traceback)."""
    import re

    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    said = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Unavailable|Failure)\b.*:", line)]
    return (said or lines or [type(exc).__name__])[-1][:400]


def _replica_class():
    import ray

    @ray.remote(max_restarts=0)
    class StageReplica:
        """One copy of a stage's models; runs windows of that stage."""

        def __init__(self, models: dict[str, str]):
            from pipeline.engines import EngineSpec, load_engine

            cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)) or None
            self.engines = {}
            for role, spec_json in models.items():
                spec = EngineSpec.from_json(spec_json)
                if spec.backend == "llamacpp" and cpus and "n_threads" not in spec.opts:  # its share of the node, not all
                    spec = EngineSpec.make(spec.backend, spec.model, base_url=spec.base_url, template=spec.template,
                                           options={**spec.opts, "n_threads": cpus})
                self.engines[role] = load_engine(spec)

        def run(self, stage: Callable, frame, params: dict, batch_dir: str | None = None):
            from pathlib import Path

            from pipeline.engines.batches import BATCH_DIR

            token = BATCH_DIR.set(Path(batch_dir) if batch_dir else None)
            try:
                return call_stage(stage, frame, {**params, **self.engines})
            finally:
                BATCH_DIR.reset(token)

        def gpu_ids(self) -> list:
            return ray.get_gpu_ids()

        def close(self) -> None:
            """Close the engines (vLLM's engine core and its workers, llama.cpp's worker) before the actor is killed:
            a kill alone can leave an engine process holding its GPU."""
            from pipeline.engines import close_engines

            close_engines()
            self.engines = {}

    return StageReplica


class ReplicaPool:
    """`count` replicas of a stage's models. `map(items, submit_args, on_done)` runs every item exactly once, each on
    whichever replica is free, and calls `on_done(item, result)` in the driver as results arrive."""

    def __init__(self, settings: Replicas, models: dict[str, str], gpus: int = 0,
                 on_notice: Callable[[str, str], None] | None = None):
        """`gpus`: what one replica takes (gpus_per_replica), given when the cluster has GPUs; the count is capped at
        what the cluster holds at once (its GPUs // `gpus`, or its CPUs) so no replica waits forever, told through
        `on_notice(event, message)`. A replica that needs more GPUs than the cluster has is a ReplicaFailure."""
        import ray

        _connect(settings.address)
        resources = ray.cluster_resources()
        self.ray, self.models = ray, models
        self.notify = on_notice or (lambda event, message: None)
        cluster_gpus = int(resources.get("GPU", 0))
        self.gpus = gpus if gpus and cluster_gpus else 0
        if self.gpus > cluster_gpus:
            raise ReplicaFailure(f"one replica needs {self.gpus} GPUs (tensor_parallel_size x pipeline_parallel_size) "
                                 f"and the Ray cluster has {cluster_gpus}: lower them or add GPUs to the cluster")
        room = cluster_gpus // self.gpus if self.gpus else int(resources.get("CPU", 1))
        count = max(1, min(settings.count, room))
        if count < settings.count:
            unit = f"{cluster_gpus} GPUs, {self.gpus} per replica" if self.gpus else f"{int(resources.get('CPU', 1))} CPUs"
            self.notify("replicas_capped", f"{settings.count} replicas asked for, the Ray cluster holds {count} "
                                           f"({unit}): running {count}")
        self.actors = [self._start() for _ in range(count)]

    def _start(self):
        return _replica_class().options(num_cpus=1, num_gpus=self.gpus).remote(self.models)

    def map(self, items: list, args: Callable, on_done: Callable, depth: int = 2) -> None:
        """Each replica holds up to `depth` items (the next one is queued while it works, so it never waits for the
        driver to write); a result is written as soon as it arrives. A lost replica's items go to others; the one it
        was running (its earliest: an actor runs its calls in order) counts an attempt, at most MAX_ATTEMPTS; a
        replica whose models fail to load stops the map at once."""
        pending, running, attempts = list(items), {}, {}  # running: object ref -> (item, actor, submission number)
        submitted = iter(range(10**12))

        def fill() -> None:
            for _ in range(depth):
                for actor in self.actors:
                    if pending and sum(a is actor for _, a, _ in running.values()) < depth:
                        item = pending.pop(0)
                        running[actor.run.remote(*args(item))] = (item, actor, next(submitted))

        fill()
        while running:
            ready, _ = self.ray.wait(list(running), num_returns=1)
            item, actor, number = running.pop(ready[0])
            try:
                result = self.ray.get(ready[0])
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError) as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise ReplicaFailure(f"a replica could not load its models: {_reason(exc)}") from None
                lost = [(number, item)] + [(n, it) for ref, (it, a, n) in list(running.items()) if a is actor]
                for ref in [ref for ref, (_, a, _) in running.items() if a is actor]:
                    del running[ref]
                lost.sort(key=lambda entry: entry[0])
                culprit = lost[0][1]
                key = repr(culprit)
                attempts[key] = attempts.get(key, 0) + 1
                if attempts[key] >= MAX_ATTEMPTS:
                    raise ReplicaFailure(f"shards {culprit} lost their replica {attempts[key]} times (last: "
                                         f"{_reason(exc)}); finished shards are kept: fix the cause (memory? a crashing "
                                         "model?) and run the same command again to resume") from None
                self.notify("replica_lost", f"a replica was lost running shards {culprit} ({_reason(exc)}); starting "
                                            f"another, attempt {attempts[key] + 1} of {MAX_ATTEMPTS}")
                self.actors[self.actors.index(actor)] = self._start()
                pending[:0] = [it for _, it in lost]  # back to the front of the queue, in their order
                fill()
                continue
            fill()
            on_done(item, result)

    def close(self, timeout: float = 120.0) -> None:
        """Close every replica's engines (waiting up to `timeout` s), then end the actors."""
        closing = [actor.close.remote() for actor in self.actors]
        if closing:
            self.ray.wait(closing, num_returns=len(closing), timeout=timeout)
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
