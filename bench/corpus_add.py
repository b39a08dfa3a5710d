"""Adding a night to a growing corpus costs what the night costs, not what the corpus holds.

    python bench/corpus_add.py                       # a 10k-row night into corpora of 100k and 1M rows

Both sides run the same `aligndata corpus add` path with its defaults (MiniLM embeddings of the first user turn,
exact + MinHash + semantic dedup against the corpus and within the night) on the same 10k-row night, whose rows
include 500 already in the corpus (found as exact duplicates). The corpora are made directly through the index
(CorpusIndex.add, one addition each): their rows are synthetic — random MinHash signatures and clustered unit
vectors (within-cluster cosine about 0.9) — because embedding a million texts takes hours on a CPU; the indexes
have the sizes a real corpus of that many rows has (one HNSW segment, 14 LSH bands per row, 512-byte signatures).
The night triggers no segment merge on either side; merges cost O(log corpus) per row over the corpus's life.
Prints seconds per side and the ratio (1M / 100k; about 1 means the cost follows the night).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.rundir import write_shard
from pipeline.score.embed import encode, texts
from pipeline.select.corpus_index import CorpusIndex, DedupSettings, exact_keys
from pipeline.select.selection import minhash_signatures, normalized_text
from pipeline.ship import corpus

WORDS = ("explain write describe compare list summarise translate plan design debug prove estimate outline draft "
         "review a the an of for in on with about how why what which when poem story essay function query proof "
         "budget recipe itinerary schedule lesson contract email report theorem algorithm database network garden "
         "river mountain city museum market physics chemistry history music football chess python rust sql").split()


def night(n: int, seed: int = 1) -> pl.DataFrame:
    """`n` distinct instructions of 12-24 random words, as records."""
    rng = np.random.default_rng(seed)
    rows = [" ".join(rng.choice(WORDS, rng.integers(12, 25))) + f" ({i})" for i in range(n)]
    return pl.DataFrame({"id": [f"night-{i}" for i in range(n)], "source": ["bench"] * n,
                         "messages": [[{"role": "user", "content": t}, {"role": "assistant", "content": "An answer."}]
                                      for t in rows], "meta": ["{}"] * n})


def clustered(n: int, dim: int, rng) -> np.ndarray:
    centres = rng.normal(size=(max(n // 8, 1), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.33 * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_corpus(folder: Path, rows: int, known: pl.DataFrame, chunk: int = 200_000) -> float:
    """A corpus of `rows` rows whose first len(known) rows are `known` (real keys, signatures, embeddings)."""
    started = time.perf_counter()
    settings = DedupSettings()
    rng = np.random.default_rng(rows)
    folded = normalized_text(known, settings.field).to_list()
    vectors = np.concatenate([encode(texts(known, settings.field)), clustered(rows - known.height, 384, rng)])
    signatures = np.concatenate([minhash_signatures(folded, num_perm=settings.num_perm, ngram=settings.ngram),
                                 rng.integers(0, 2**32, (rows - known.height, settings.num_perm), dtype=np.uint64)])
    ids = [f"corpus-{i}" for i in range(rows)]  # the known rows under other ids: found as exact duplicates
    keys = exact_keys(folded) + exact_keys(ids[known.height:])
    index = CorpusIndex(folder / "index", settings)
    index.add(ids=ids, keys=keys, signatures=signatures, vectors=vectors.astype(np.float32), content="synthetic",
              entry={"run": "synthetic", "run_info": {}, "rows_in": rows, "rows_added": rows, "drops": {},
                     "corpus_rows": rows, "files": {}, "time": "", "seconds": 0})
    index.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--night", type=int, default=10_000)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--known", type=int, default=500, help="rows of the night already in the corpus")
    args = parser.parse_args()
    rows = night(args.night)
    encode(["warm the embedding model up"])  # loaded once, outside the timings
    results = {}
    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        run = Path(tmp) / "run"
        write_shard(rows, run / "export" / "data.parquet")
        for size in (int(s) for s in args.sizes.split(",")):
            folder = Path(tmp) / f"corpus-{size}"
            built = build_corpus(folder, size, rows.head(args.known))
            started = time.perf_counter()
            entry = corpus.add(run, folder)
            results[size] = time.perf_counter() - started
            print(f"corpus of {size:>9,} rows (built in {built:6.1f} s): adding {args.night:,} rows took "
                  f"{results[size]:6.1f} s → {entry['rows_added']:,} added, drops {entry['drops']}", flush=True)
    small, large = min(results), max(results)
    print(f"ratio {large:,} / {small:,} rows: {results[large] / results[small]:.2f}  (1.00 = the cost follows the night only)")


if __name__ == "__main__":
    main()
