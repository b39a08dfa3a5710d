"""The curate flow on a local 2-node Ray cluster (prefect-ray's RayTaskRunner) gives the local run's output.

One node declares a (logical) GPU, and the flow places engine steps with remote_options(num_gpus=1), as a GPU
host would; the other steps take no GPU.
"""
import json
import os

import numpy as np
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.curate import curate_flow
from flows.tasks import ray_runner
from pipeline.core.rundir import read_shards

OPTIONS = {"k": 4, "dedup": ["exact", "minhash"], "shard_size": 3}
ENGINE = {"backend": "llamacpp"}


@pytest.mark.slow
@pytest.mark.real_llm
def test_curate_flow_on_a_two_node_ray_cluster_equals_the_local_run(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    data = tmp_path / "data.jsonl"
    topics = ["sorting a list in Python", "the French revolution", "baking bread", "prime numbers", "photosynthesis",
              "writing a cover letter", "sorting a list in Python", "binary search"]
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Explain {t}."},
                                                     {"role": "assistant", "content": f"Here is a short explanation of {t}."}]}) + "\n"
                            for t in topics))
    with prefect_test_harness(server_startup_timeout=120):
        local = read_shards(curate_flow(out=str(tmp_path / "local"), input_path=str(data), engine=ENGINE, options=OPTIONS))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1, num_gpus=1)
        try:
            on_ray = curate_flow.with_options(task_runner=ray_runner(cluster.address))
            remote = read_shards(on_ray(out=str(tmp_path / "ray"), input_path=str(data), engine=ENGINE, options=OPTIONS, gpus=1))
        finally:
            import ray
            ray.shutdown()
            cluster.shutdown()
    assert local.height == remote.height == 4
    assert remote["id"].to_list() == local["id"].to_list()  # the same rows, in the same selection order
    np.testing.assert_allclose(remote["deita_score"].to_numpy(), local["deita_score"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.array(remote["embedding"].to_list()), np.array(local["embedding"].to_list()), atol=1e-6)
    manifest = [json.loads(line) for line in (tmp_path / "ray" / "manifest.jsonl").read_text().splitlines()]
    assert manifest and all(entry["pid"] != os.getpid() for entry in manifest)  # every step ran in a Ray worker
