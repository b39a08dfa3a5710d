"""Memory bounded by the window, not the dataset: lazy shard reading, fingerprints from the manifest's recorded
hashes, the blockwise nearest-neighbour search, and the report's sampled clustering."""
import os

import numpy as np
import polars as pl

from pipeline.core.rundir import LazyShards, read_manifest, shard_fingerprint
from pipeline.engines import EngineSpec
from pipeline.recipes.runner import run_stage
from pipeline.select.neighbours import min_neighbor_distance
from pipeline.synth import magpie


def test_a_stage_reads_its_input_by_range_and_the_fingerprint_comes_from_the_manifest(tmp_path, monkeypatch):
    spec = EngineSpec.make("fake", "lazy-model")
    run_stage(tmp_path, "instructions", magpie.synthesize, source=magpie.plan(10, seed=0), engine=spec, shard_size=4)
    lazy = LazyShards(tmp_path / "instructions")
    assert lazy.height == 10 and lazy.slice(4, 4)["id"].to_list() == magpie.plan(10, seed=0)["id"].to_list()[4:8]
    assert all("sha256" in e for e in read_manifest(tmp_path))
    recorded = shard_fingerprint(tmp_path / "instructions")
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        reads.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    assert shard_fingerprint(tmp_path / "instructions") == recorded and not [r for r in reads if r.endswith(".parquet")]
    monkeypatch.undo()
    # a shard changed behind the manifest's back is read and hashed, so the fingerprint changes
    shard = tmp_path / "instructions" / "shard-00001.parquet"
    pl.read_parquet(shard).head(2).write_parquet(shard)
    assert shard_fingerprint(tmp_path / "instructions") != recorded
    os.utime(shard, ns=(0, 0))
    assert shard_fingerprint(tmp_path / "instructions") != recorded


def test_min_neighbour_distance_searches_the_nearest_neighbours_in_blocks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[10] = x[3] + 1e-3  # a near-duplicate of row 3
    x[250] = x[3]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    small = min_neighbor_distance(x, block=7, neighbours=50)
    full = min_neighbor_distance(x, block=4096, neighbours=50)
    for a, b in zip(small, full):
        np.testing.assert_allclose(a, b, atol=1e-6)
    distance, repeats, first = full
    assert repeats[3] == repeats[10] == repeats[250] == 2 and first[10] == first[250] == 3 and first[3] == -1
    assert distance[250] < 1e-6 and repeats[0] == 0
    exact = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1) + np.eye(len(x)) * 9
    np.testing.assert_allclose(distance, exact.min(1), atol=1e-5)


def test_the_report_clusters_a_sample_but_counts_every_row():
    from pipeline.ship.report import coverage

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    x = (centers[rng.integers(0, 3, 600)] + 0.05 * rng.normal(size=(600, 8))).astype(np.float32)
    pool = pl.DataFrame({"id": [str(i) for i in range(600)], "embedding": x.tolist()},
                        schema_overrides={"embedding": pl.List(pl.Float32)})
    cov = coverage(pool, {"0", "1", "2"}, clusters=3, plotted=50)
    assert sum(size for size, _ in cov["clusters"]) == 600 and sum(s for _, s in cov["clusters"]) == 3
    assert len(cov["xy"]) == 50 and cov["selected"].sum() == 3  # the selected rows are always plotted
