"""Data-parallel engine replicas on Ray: an engine stage's windows of shards spread over N actors, each holding its
own copy of the stage's models (loaded once), one per GPU on GPU hosts.

The driver (the process running the stage) stays the only writer: a replica returns its window's output frame and
the driver writes and logs each shard, so every shard is written exactly once, and resume works as without
replicas. A replica that dies mid-window (a killed process, a lost node) has its window sent to another live
replica, and a new replica takes its place. Rows are seeded per row, so which replica made a row does not change it.

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


def call_stage(stage: Callable, frame: pl.DataFrame, kwargs: dict) -> tuple[pl.DataFrame, list[str], float]:
    """(the stage's output, its StageWarnings' messages, seconds) for one call; other warnings are shown as usual."""
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StageWarning)
        out = stage(frame, **kwargs)
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, StageWarning)})
    for w in caught:
        if not issubclass(w.category, StageWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return out, notes, time.perf_counter() - started


def _connect(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address in (None, "local") else address, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)


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

        def run(self, stage: Callable, frame, params: dict):
            return call_stage(stage, frame, {**params, **self.engines})

    return StageReplica


class ReplicaPool:
    """`count` replicas of a stage's models. `map(items, submit_args, on_done)` runs every item exactly once, each on
    whichever replica is free, and calls `on_done(item, result)` in the driver as results arrive."""

    def __init__(self, settings: Replicas, models: dict[str, str], gpu: bool = False):
        """`gpu`: the models want a GPU each (vLLM), given when the cluster has GPUs. The count is capped at what the
        cluster can hold at once (its GPUs, or its CPUs), with a StageWarning, so no replica waits forever."""
        import ray

        _connect(settings.address)
        resources = ray.cluster_resources()
        self.ray, self.models = ray, models
        self.gpus = 1.0 if gpu and resources.get("GPU", 0) >= 1 else 0.0
        room = int(resources.get("GPU", 0)) if self.gpus else int(resources.get("CPU", 1))
        count = max(1, min(settings.count, room))
        if count < settings.count:
            warnings.warn(f"{settings.count} replicas asked for, the Ray cluster holds {count} "
                          f"({'GPUs' if self.gpus else 'CPUs'}): running {count}", StageWarning, stacklevel=2)
        self.actors = [self._start() for _ in range(count)]

    def _start(self):
        return _replica_class().options(num_cpus=1, num_gpus=self.gpus).remote(self.models)

    def map(self, items: list, args: Callable, on_done: Callable, depth: int = 2) -> None:
        """Each replica holds up to `depth` items (the next one is queued while it works, so it never waits for the
        driver to write); a result is written as soon as it arrives."""
        pending, running, dead = list(items), {}, set()  # running: object ref -> (item, actor)

        def fill() -> None:
            for _ in range(depth):
                for actor in self.actors:
                    if pending and sum(a is actor for _, a in running.values()) < depth:
                        item = pending.pop(0)
                        running[actor.run.remote(*args(item))] = (item, actor)

        fill()
        while running:
            ready, _ = self.ray.wait(list(running), num_returns=1)
            item, actor = running.pop(ready[0])
            try:
                result = self.ray.get(ready[0])
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError):
                pending.insert(0, item)  # lost with its replica: back to the front of the queue
                if id(actor) not in dead:  # one replacement per lost replica, however many items it held
                    dead.add(id(actor))
                    self.actors[self.actors.index(actor)] = self._start()
                fill()
                continue
            fill()
            on_done(item, result)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
