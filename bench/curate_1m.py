"""Curation at scale: filters + exact / MinHash / semantic dedup + Repr Filter selection over N rows with
embeddings given (synthetic: templated instructions with planted exact and near duplicates, clustered
384-d unit vectors). Prints each step's time, the total, and peak RSS. Target for N = 1M on 2 cores:
< 10 min and < 8 GB.

    python bench/curate_1m.py --n 1000000 --k 50000
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl

import filters
from pipeline.select import selection
from pipeline.score.embed import as_column

WORDS = ("how what why explain write describe compare list plan design build fix debug translate summarize the a an "
         "of for in on with to and or my our your python recipe garden budget trip essay poem email story code bug "
         "database network cat dog market history physics music painting marathon interview resume salary city").split()


def synthetic(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    words = np.asarray(WORDS)[rng.integers(0, len(WORDS), (n, 14))]
    texts = [" ".join(row) + "?" for row in words.tolist()]
    centres = rng.normal(size=(n // 8, 384)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(n, 384)).astype(np.float32) / np.float32(np.sqrt(384))
    vectors = centres[rng.integers(0, len(centres), n)] + np.float32(0.33) * noise  # within a cluster: cosine ~0.9
    # 2% exact copies (case changed) and 2% one-word edits of other rows, with their source's vector + small noise
    copies, edits = np.array_split(rng.choice(n, n // 25, replace=False), 2)
    for i in copies:
        texts[i] = texts[(i * 7919) % n].upper()
    for i in edits:
        source = texts[(i * 104729) % n].split()
        source[3] = "zebra"
        texts[i] = " ".join(source)
    sources = np.r_[(copies * 7919) % n, (edits * 104729) % n]
    vectors[np.r_[copies, edits]] = vectors[sources] + np.float32(0.05) * noise[sources]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    messages = pl.DataFrame({"u": texts}).select(pl.concat_list(
        pl.struct(pl.lit("user").alias("role"), pl.col("u").alias("content")),
        pl.struct(pl.lit("assistant").alias("role"), pl.lit("An answer.").alias("content"))).alias("messages"))["messages"]
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "source": "bench", "meta": "{}",
                         "deita_score": rng.random(n)}).with_columns(messages, as_column(vectors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=50_000)
    args = parser.parse_args()
    timings = {}
    started = t = time.perf_counter()
    df = synthetic(args.n)
    timings["make data (not curation)"] = time.perf_counter() - t
    curation_started = time.perf_counter()
    steps = [
        ("filters", lambda d: filters.apply(d, [{"name": "instruction_length", "min_chars": 10}, "no_trailing_colon"])[0]),
        ("dedup exact", lambda d: selection.dedup(d, method="exact")),
        ("dedup minhash", lambda d: selection.dedup(d, method="minhash", threshold=0.5, ngram=3)),
        ("dedup semantic", lambda d: selection.dedup(d, method="semantic", threshold=0.95)),
        ("repr filter", lambda d: selection.diverse_top_k(d, k=args.k, tau=0.9)),
    ]
    for name, step in steps:
        t = time.perf_counter()
        df = step(df)
        if "drop_reason" in df.columns:
            dropped = df["drop_reason"].is_not_null().sum()
            df = df.filter(pl.col("drop_reason").is_null()).drop("drop_reason")
        else:
            dropped = 0
        timings[name] = time.perf_counter() - t
        print(f"{name:>16}: {timings[name]:7.1f} s   dropped {dropped:>8}   rows left {df.height}", flush=True)
    curation = time.perf_counter() - curation_started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"N={args.n} k={args.k}: curation {curation:.1f} s (target < 600 s), data generation "
          f"{timings['make data (not curation)']:.1f} s, total {time.perf_counter() - started:.1f} s; "
          f"peak RSS {peak_gb:.2f} GB (target < 8 GB)")


if __name__ == "__main__":
    main()
