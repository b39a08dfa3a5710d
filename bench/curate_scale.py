"""Curation at scale, the way a user's run does it: N rows (default 5M) with embeddings and deita scores given go
through the curate flow's global steps, each a `run_stage` over the previous step's shards in a run directory —
exact dedup → MinHash dedup → embeddings attached shard by shard (standing in for the embed stage; the vectors are
given) → semantic dedup → Repr Filter (k = 100k) — at the product's default parameters. Prints each step's time and
peak RSS, the total, and the recall of the approximate semantic dedup (IVF-SQ8, used above 200k rows) against the
exact one on a 200k-row sample. Goal for 5M rows here (2 cores): < 30 min and < 12 GB.

    python bench/curate_scale.py                        # 5M rows, k = 100k; ~25 GB of disk under --dir
    python bench/curate_scale.py --n 500000 --k 10000

The rows: 14 words from a small vocabulary; 2% are upper-cased copies of an earlier row (exact duplicates), 2% have
its last word changed (MinHash duplicates), 2% its fourth word changed (semantic duplicates only: their vector is the
source's plus a little noise). Vectors are 384-d unit vectors around n/8 cluster centres (cosine ~0.9 within a
cluster, so the Repr Filter at tau 0.9 has real work). Everything is a pure function of the row number, so a shard
is made without the others.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.rundir import write_shard
from pipeline.recipes.runner import run_stage
from pipeline.score.embed import as_column, matrix
from pipeline.select import selection
from pipeline.select.neighbours import semantic_duplicates

WORDS = np.asarray(("how what why explain write describe compare list plan design build fix debug translate summarize "
                    "the a an of for in on with to and or my our your python recipe garden budget trip essay poem email "
                    "story code bug database network cat dog market history physics music painting marathon interview "
                    "resume salary city").split())
DIM, POOL, LENGTH = 384, 65_536, 14
ORIGINAL, EXACT, LAST_WORD, FOURTH_WORD = 0, 1, 2, 3


def mix(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64's finaliser: a well-spread uint64 hash of each integer, per salt."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15 * (salt + 1) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def pool(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(POOL, DIM)).astype(np.float32) / np.float32(np.sqrt(DIM))


NOISE, CENTRES = pool(1), pool(2)


def kinds_and_sources(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's kind and the original row its text comes from (itself for an original)."""
    def raw(r):
        kind = (mix(r, 0) % np.uint64(100)).astype(np.int64)
        return np.where((kind < 6) & (r > 0), kind // 2 + 1, ORIGINAL)

    kind = raw(rows)
    source = np.where(kind == ORIGINAL, rows, (mix(rows, 1) % np.maximum(rows, 1).astype(np.uint64)).astype(np.int64))
    kind = np.where(raw(source) == ORIGINAL, kind, ORIGINAL)  # a copy of a copy would chain: make it an original
    return kind, np.where(kind == ORIGINAL, rows, source)


def texts(rows: np.ndarray) -> list[str]:
    kind, source = kinds_and_sources(rows)
    words = WORDS[(mix(source[:, None] * LENGTH + np.arange(LENGTH), 2) % np.uint64(len(WORDS))).astype(np.int64)]
    words[kind == LAST_WORD, -1] = "zebra"
    words[kind == FOURTH_WORD, 3] = "zebra"
    out = [" ".join(w) + "?" for w in words.tolist()]
    return [t.upper() if k == EXACT else t for t, k in zip(out, kind.tolist())]


def noise(rows: np.ndarray) -> np.ndarray:
    return (NOISE[mix(rows, 3) % np.uint64(POOL)] + NOISE[mix(rows, 4) % np.uint64(POOL)]) / np.float32(np.sqrt(2))


def vectors(rows: np.ndarray, n: int) -> np.ndarray:
    kind, source = kinds_and_sources(rows)
    cluster = mix(source, 5) % np.uint64(max(n // 8, 1))
    centre = CENTRES[mix(cluster, 6) % np.uint64(POOL)] + CENTRES[mix(cluster, 7) % np.uint64(POOL)]
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    out = centre + np.float32(0.33) * noise(source)  # the source's own vector ...
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out += np.where((kind == ORIGINAL)[:, None], np.float32(0), np.float32(0.05) * noise(rows))  # ... a copy's, nudged
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def rows_of(df: pl.DataFrame) -> np.ndarray:
    return df["id"].str.slice(1).cast(pl.Int64).to_numpy()


def write_input(directory: Path, n: int, shard: int = 65_536) -> None:
    for index, start in enumerate(range(0, n, shard)):
        rows = np.arange(start, min(start + shard, n))
        scores = (mix(rows, 8) >> np.uint64(11)).astype(np.float64) / 2**53
        frame = pl.DataFrame({"id": [f"r{r}" for r in rows], "source": "bench", "meta": "{}", "deita_score": scores,
                              "u": texts(rows)})
        frame = frame.with_columns(pl.concat_list(
            pl.struct(pl.lit("user").alias("role"), pl.col("u").alias("content")),
            pl.struct(pl.lit("assistant").alias("role"), pl.lit("An answer.").alias("content"))).alias("messages")).drop("u")
        write_shard(frame, directory / f"shard-{index:05d}.parquet")


def attach_embeddings(df: pl.DataFrame, *, n: int) -> pl.DataFrame:
    """The given embeddings of these rows (in place of the embed stage, which would compute them)."""
    return df.with_columns(as_column(vectors(rows_of(df), n)))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak() -> None:
    """Start a new peak (Linux: clear_refs 5 resets VmHWM), so each step's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def step_peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2**20
    return peak_gb()


def recall_on_sample(run: Path, sample: int) -> tuple[float, int, int]:
    """Recall of the approximate (IVF-SQ8) semantic dedup against the exact one on the first `sample` embedded rows:
    the share of the rows exact search marks as duplicates that the approximate search marks too."""
    paths = sorted((run / "embedded").glob("shard-*.parquet"))
    x = matrix(pl.scan_parquet(paths).head(sample).collect())
    exact = semantic_duplicates(x, 0.95, approximate=False)
    approximate = semantic_duplicates(x, 0.95, approximate=True)
    truth = exact >= 0
    return float((approximate[truth] >= 0).mean()) if truth.any() else float("nan"), int(truth.sum()), len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5_000_000)
    parser.add_argument("--k", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=200_000, help="rows for the approximate-vs-exact recall")
    parser.add_argument("--dir", type=Path, default=None, help="where the run directory goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="curate-scale-", dir=args.dir))
    run = base / "run"
    try:
        t = time.perf_counter()
        write_input(base / "input", args.n)
        print(f"input: {args.n:,} rows written in {time.perf_counter() - t:.0f} s (not curation)", flush=True)
        steps = [("dedup-exact", selection.dedup, {"method": "exact"}, None, base / "input"),
                 ("dedup-minhash", selection.dedup, {"method": "minhash"}, None, run / "dedup-exact"),
                 ("embedded", attach_embeddings, {"n": args.n}, 4096, run / "dedup-minhash"),
                 ("dedup-semantic", selection.dedup, {"method": "semantic"}, None, run / "embedded"),
                 ("selected", selection.diverse_top_k, {"k": args.k}, None, run / "dedup-semantic")]
        total, peaks = 0.0, []
        for name, stage, params, shard_size, source in steps:
            reset_peak()
            t = time.perf_counter()
            run_stage(run, name, stage, source=source, params=params, shard_size=shard_size)
            seconds = time.perf_counter() - t
            rows = pl.scan_parquet(sorted((run / name).glob("shard-*.parquet"))).select(pl.len()).collect().item()
            given = " (given vectors, not timed as curation)" if name == "embedded" else ""
            total += 0 if given else seconds
            peaks.append(step_peak_gb())
            print(f"{name:>15}: {seconds:7.1f} s   peak RSS {peaks[-1]:5.2f} GB   rows kept {rows:>10,}{given}", flush=True)
        print(f"N={args.n:,} k={args.k:,}: curation {total / 60:.1f} min (goal < 30), peak RSS {max(peaks):.2f} GB "
              "(goal < 12)", flush=True)
        t = time.perf_counter()
        recall, duplicates, rows = recall_on_sample(run, args.sample)
        print(f"approximate vs exact semantic dedup on {rows:,} rows: recall {recall:.4f} of {duplicates:,} duplicates "
              f"(goal >= 0.95; {time.perf_counter() - t:.0f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
