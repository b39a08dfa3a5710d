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


def embedded_shards(directory, n, per=7, dim=8, seed=0):
    """Record shards with unit embeddings and a score, `per` rows each; returns the vectors."""
    from pipeline.core.rundir import write_shard
    from pipeline.score.embed import as_column

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for i, start in enumerate(range(0, n, per)):
        rows = range(start, min(start + per, n))
        frame = pl.DataFrame({"id": [f"r{r}" for r in rows], "source": "t", "meta": "{}",
                              "messages": [[{"role": "user", "content": f"q{r}"}] for r in rows],
                              "deita_score": rng.random(len(rows))}).with_columns(as_column(x[start:start + per]))
        write_shard(frame, directory / f"shard-{i:05d}.parquet")
    return x


def test_a_global_stage_gets_its_embeddings_in_one_buffer_and_views_it(tmp_path):
    from pipeline.score.embed import matrix

    x = embedded_shards(tmp_path / "in", 40)
    frame = LazyShards(tmp_path / "in").slice(0, 40)
    assert frame["embedding"].n_chunks() == 1
    assert frame.columns == [c for c in pl.read_parquet_schema(tmp_path / "in" / "shard-00000.parquet") if c != "drop_reason"]
    view = matrix(frame)
    assert not view.flags.owndata and not view.flags.writeable  # the column's own buffer: no second copy
    np.testing.assert_array_equal(view, x)
    np.testing.assert_array_equal(matrix(LazyShards(tmp_path / "in").slice(10, 20)), x[10:30])  # across files
    # a missing vector: read as it is (a copy), and matrix names the row
    with_null = pl.read_parquet(tmp_path / "in" / "shard-00001.parquet").with_columns(
        pl.when(pl.col("id") == "r8").then(None).otherwise(pl.col("embedding")).alias("embedding"))
    with_null.write_parquet(tmp_path / "in" / "shard-00001.parquet")
    frame = LazyShards(tmp_path / "in").slice(0, 40)
    assert frame["embedding"].null_count() == 1
    try:
        matrix(frame)
        raise AssertionError("a missing vector must be an error")
    except ValueError as exc:
        assert "'r8'" in str(exc)


def test_global_stages_write_kept_and_dropped_rows_without_copying_the_frame(tmp_path, monkeypatch):
    """Semantic dedup then the Repr Filter through the runner, over many small input shards: the shards hold
    exactly the rows the in-memory stages keep and drop, in the same order."""
    from pipeline.core import rundir
    from pipeline.select import selection

    monkeypatch.setattr(rundir, "ROW_GROUP", 16)  # several row groups per written file
    x = embedded_shards(tmp_path / "in", 90, dim=3)  # 3-d: many pairs above 0.95
    run_stage(tmp_path / "run", "dedup-semantic", selection.dedup, source=tmp_path / "in",
              params={"method": "semantic"}, shard_size=None)
    run_stage(tmp_path / "run", "selected", selection.diverse_top_k, source=tmp_path / "run" / "dedup-semantic",
              params={"k": 10}, shard_size=None)
    whole = LazyShards(tmp_path / "in").slice(0, 90)
    deduped = selection.dedup(whole, method="semantic")
    expected = selection.diverse_top_k(deduped.filter(pl.col("drop_reason").is_null()).drop("drop_reason"), k=10)
    for stage, out in (("dedup-semantic", deduped), ("selected", expected)):
        kept = pl.read_parquet(tmp_path / "run" / stage / "shard-00000.parquet")
        dropped = pl.read_parquet(tmp_path / "run" / stage / "dropped-00000.parquet")
        assert kept["id"].to_list() == out.filter(pl.col("drop_reason").is_null())["id"].to_list()
        assert dropped["id"].to_list() == out.filter(pl.col("drop_reason").is_not_null())["id"].to_list()
        assert dropped["drop_reason"].unique().to_list() == [{"dedup-semantic": "dup_semantic"}.get(stage, "not_selected")]
    assert 10 == pl.read_parquet(tmp_path / "run" / "selected" / "shard-00000.parquet").height
    assert 20 < pl.read_parquet(tmp_path / "run" / "dedup-semantic" / "dropped-00000.parquet").height < 80
    np.testing.assert_array_equal(matrix_of(tmp_path / "run" / "selected" / "shard-00000.parquet"),
                                  x[[int(i[1:]) for i in expected["id"].head(10).to_list()]])


def matrix_of(path):
    from pipeline.score.embed import matrix

    return matrix(pl.read_parquet(path))
