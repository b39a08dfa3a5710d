"""Replicas on GPUs, checked on a CPU host with Ray's logical GPUs: a replica takes tensor × pipeline parallel size
GPUs and the count is capped at what fits; a model that does not load stops the stage at once; a window that kills
every replica stops it after MAX_ATTEMPTS runs, with the lost replicas on the console and in the manifest."""
import logging
import os

import pytest
import ray

from pipeline.core.rundir import read_manifest
from pipeline.engines import EngineSpec
from pipeline.recipes.replicas import MAX_ATTEMPTS, ReplicaFailure, ReplicaPool, Replicas, gpus_per_replica, replicas
from pipeline.recipes.runner import run_stage
from pipeline.synth import magpie


@pytest.fixture(scope="module")
def eight_gpu_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=8, num_gpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


FAKE = {"engine": EngineSpec.make("fake", "replica-model").to_json()}


def placed(pool: ReplicaPool) -> list[set[int]]:
    """The GPUs each replica was given; across replicas they must be disjoint (Ray hands freed ids out in any order)."""
    given = [set(ids) for ids in ray.get([actor.gpu_ids.remote() for actor in pool.actors])]
    assert len(set().union(*given)) == sum(map(len, given)), given
    return given


@pytest.mark.slow
def test_replicas_take_tensor_times_pipeline_parallel_gpus_and_fit_the_cluster(eight_gpu_ray):
    tp1 = gpus_per_replica([EngineSpec.make("vllm", "/models/llama-8b")])
    pool = ReplicaPool(Replicas(8), FAKE, gpus=tp1)
    try:
        assert sorted(map(len, placed(pool))) == [1] * 8  # one GPU each, all eight
    finally:
        pool.close()
    notices = []
    tp4 = gpus_per_replica([EngineSpec.make("vllm", "/models/llama-70b", options={"tensor_parallel_size": 4})])
    pool = ReplicaPool(Replicas(8), FAKE, gpus=tp4, on_notice=lambda event, message: notices.append((event, message)))
    try:
        assert sorted(map(len, placed(pool))) == [4, 4]  # 8 asked, 2 fit: 4 GPUs each
        assert notices == [("replicas_capped", "8 replicas asked for, the Ray cluster holds 2 (8 GPUs, 4 per replica): "
                                               "running 2")]
    finally:
        pool.close()
    tp4pp4 = gpus_per_replica([EngineSpec.make("vllm", "m", options={"tensor_parallel_size": 4, "pipeline_parallel_size": 4})])
    with pytest.raises(ReplicaFailure, match="one replica needs 16 GPUs .* the Ray cluster has 8"):
        ReplicaPool(Replicas(1), FAKE, gpus=tp4pp4)


@pytest.mark.slow
def test_a_model_that_does_not_load_stops_the_stage_instead_of_respawning(tmp_path, eight_gpu_ray, monkeypatch):
    starts = []
    real_start = ReplicaPool._start
    monkeypatch.setattr(ReplicaPool, "_start", lambda self: starts.append(1) or real_start(self))
    spec = EngineSpec.make("llamacpp", str(tmp_path / "missing.gguf"))
    with replicas(2, address="local"), pytest.raises(ReplicaFailure, match="could not load its models: .*missing.gguf"):
        run_stage(tmp_path / "run", "instructions", magpie.synthesize, source=magpie.plan(8, seed=0), engine=spec,
                  shard_size=2)
    assert len(starts) == 2  # the two replicas it started, none respawned


@pytest.mark.slow
def test_a_window_that_kills_every_replica_stops_after_max_attempts(tmp_path, eight_gpu_ray, caplog):
    def dies_in_shard_1(df, *, engine):
        if 1 in df["_shard"].to_list():
            os._exit(1)
        return magpie.synthesize(df, engine=engine)

    with caplog.at_level(logging.WARNING, logger="aligndata"), replicas(2, address="local"), \
            pytest.raises(ReplicaFailure, match=rf"shards \[1\] lost their replica {MAX_ATTEMPTS} times"):
        run_stage(tmp_path / "run", "instructions", dies_in_shard_1, source=magpie.plan(8, seed=0),
                  engine=EngineSpec.make("fake", "replica-model"), shard_size=2)
    lost = [e for e in read_manifest(tmp_path / "run") if e.get("event") == "replica_lost"]
    assert len(lost) == MAX_ATTEMPTS - 1 and all("[1]" in e["message"] for e in lost)
    assert [r.getMessage() for r in caplog.records if "replica was lost" in r.getMessage()] == \
        [f"instructions: {e['message']}" for e in lost]
    done = {e["shard"] for e in read_manifest(tmp_path / "run") if e.get("status") == "done"}
    assert 1 not in done and not (tmp_path / "run" / "instructions" / "shard-00001.parquet").exists()
