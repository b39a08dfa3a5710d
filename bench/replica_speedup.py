"""Data-parallel engine replicas: 2 llama.cpp replicas on a local 2-node Ray cluster (1 CPU each) against 1 replica
on the same cluster, the same seeded Magpie instruction requests on both sides; prints both times and the ratio,
and checks the rows are identical.

    python bench/replica_speedup.py            # 96 rows, 256 tokens at most, shards of 4
Target: >= 1.6x.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pipeline.core.rundir import read_shards  # noqa: E402
from pipeline.engines import EngineSpec  # noqa: E402
from pipeline.recipes.replicas import replicas  # noqa: E402
from pipeline.recipes.runner import run_stage  # noqa: E402
from pipeline.synth import magpie  # noqa: E402


def measure(n: int, max_tokens: int, shard_size: int) -> dict:
    """Seconds for 1 and 2 replicas, each including its replicas' start (what a user waits for)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    spec, plan, seconds, rows = EngineSpec.make("llamacpp", options={"n_ctx": 1024}), magpie.plan(n, seed=0), {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for count in (1, 2):
                started = time.perf_counter()
                with replicas(count, address=cluster.address):
                    run_stage(f"{tmp}/r{count}", "instructions", magpie.synthesize, source=plan, engine=spec,
                              shard_size=shard_size, params={"max_tokens": max_tokens})
                seconds[count] = time.perf_counter() - started
                rows[count] = read_shards(f"{tmp}/r{count}/instructions").drop("meta")
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"seconds": seconds, "speedup": seconds[1] / seconds[2], "identical": rows[1].equals(rows[2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=4)
    args = parser.parse_args()
    result = measure(args.n, args.max_tokens, args.shard_size)
    print(f"{args.n} rows, shards of {args.shard_size}: 1 replica {result['seconds'][1]:.1f} s, 2 replicas "
          f"{result['seconds'][2]:.1f} s, speedup {result['speedup']:.2f}x (target >= 1.6); identical rows: {result['identical']}")


if __name__ == "__main__":
    main()
