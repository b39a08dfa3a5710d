"""MinHash near-duplicate dedup, side by side in one run on the same texts: ours (selection.minhash_signatures +
minhash_duplicates), datasketch's MinHashLSH used plainly (query, then insert), and rensa (a Rust MinHash: its
digests and its LSH). 5-word shingles, 128 permutations, threshold 0.8. Precision and recall of the pairs each
method calls duplicates, against exact Jaccard of the shingle sets on a sample of rows.

    python bench/dedup.py --n 40000

Then semantic dedup of the same texts (cosine >= 0.95 of given bag-of-words vectors): ours
(neighbours.semantic_duplicates) vs semhash (`pip install -e .[bench]`; skipped without it).

The texts: sentences drawn from a 2,000-word vocabulary, a fifth of them planted near-duplicates of an earlier row
(a few words changed, so true Jaccard spans the threshold), some in groups of up to 50 copies (the buckets whose
pairs grow as m²).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 5


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(2000)]
    rows: list[str] = []
    while len(rows) < n:
        if rows and rng.random() < 0.2:
            words = rows[int(rng.integers(0, len(rows)))].split()
            copies = int(rng.integers(1, 50)) if rng.random() < 0.05 else 1
            for _ in range(min(copies, n - len(rows))):
                edited = list(words)
                for _ in range(int(rng.integers(0, 3))):
                    edited[int(rng.integers(0, len(edited)))] = vocabulary[int(rng.integers(0, 2000))]
                rows.append(" ".join(edited))
        else:
            rows.append(" ".join(rng.choice(vocabulary, size=int(rng.integers(20, 80)))))
    return rows


def shingles(text: str) -> set[str]:
    words = text.split()
    return {" ".join(words[i:i + NGRAM]) for i in range(max(len(words) - NGRAM + 1, 1))}


def ours(rows: list[str]) -> np.ndarray:
    from pipeline.select.selection import minhash_duplicates, minhash_signatures

    return minhash_duplicates(minhash_signatures(rows, num_perm=NUM_PERM, ngram=NGRAM), THRESHOLD)


def datasketch_plain(rows: list[str]) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    lsh, dup_of = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM), np.full(len(rows), -1, dtype=np.int64)
    hashes = MinHash.bulk([[s.encode() for s in shingles(t)] for t in rows], num_perm=NUM_PERM, seed=1)
    for i, m in enumerate(hashes):
        found = lsh.query(m)
        if found:
            dup_of[i] = min(found)
        else:
            lsh.insert(i, m)
    return dup_of


def rensa_plain(rows: list[str]) -> np.ndarray:
    from rensa import RMinHash, RMinHashLSH

    hashes = RMinHash.from_token_sets([sorted(shingles(t)) for t in rows], num_perm=NUM_PERM, seed=1)
    lsh, dup_of = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=16), np.full(len(rows), -1, dtype=np.int64)
    for i, m in enumerate(hashes):
        found = [j for j in lsh.query(m) if hashes[j].jaccard(m) >= THRESHOLD]
        if found:
            dup_of[i] = min(found)
        else:
            lsh.insert(i, m)
    return dup_of


def quality(rows: list[str], dup_of: np.ndarray, sample: int = 3000) -> tuple[float, float]:
    """(precision, recall) of "row i duplicates an earlier kept row" against exact Jaccard >= threshold, on the first
    `sample` rows."""
    sets = [shingles(t) for t in rows[:sample]]
    kept: list[int] = []
    truth = np.zeros(sample, dtype=bool)
    for i, s in enumerate(sets):
        if any(len(s & sets[j]) / len(s | sets[j]) >= THRESHOLD for j in kept):
            truth[i] = True
        else:
            kept.append(i)
    called = dup_of[:sample] >= 0
    precision = (called & truth).sum() / max(called.sum(), 1)
    recall = (called & truth).sum() / max(truth.sum(), 1)
    return float(precision), float(recall)


SEMANTIC_THRESHOLD = 0.95


def text_vectors(rows: list[str], dim: int = 384) -> np.ndarray:
    """Unit bag-of-words vectors (hashed words; a few changed words move a row a little): both semantic methods get
    these same vectors, so the comparison is of the similarity search and the keep/drop rule, not of an embedder."""
    from sklearn.feature_extraction.text import HashingVectorizer

    x = HashingVectorizer(n_features=dim, alternate_sign=True, norm="l2").transform(rows).toarray().astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def semantic_ours(rows: list[str], vectors: np.ndarray) -> np.ndarray:
    from pipeline.select.neighbours import semantic_duplicates

    return semantic_duplicates(vectors, SEMANTIC_THRESHOLD)


def semantic_semhash(rows: list[str], vectors: np.ndarray) -> np.ndarray:
    """semhash (MinishLab: exact grouping, a usearch ANN index, threshold queries, a canonical per group), its
    encoder handing back the given vectors; dup_of marks the rows it filters (the canonical's row, or 0 if unknown)."""
    from semhash import SemHash

    by_text = {t: v for t, v in zip(rows, vectors)}

    class Given:
        def encode(self, inputs, **_):
            return np.stack([by_text[t] for t in inputs])

    result = SemHash.from_records(records=rows, model=Given()).self_deduplicate(threshold=SEMANTIC_THRESHOLD)
    first = {}
    for i, t in enumerate(rows):
        first.setdefault(t, i)
    selected = {first[t] for t in result.selected}
    dup_of = np.full(len(rows), -1, dtype=np.int64)
    dup_of[[i for i in range(len(rows)) if i not in selected]] = 0
    return dup_of


def semantic_quality(vectors: np.ndarray, dup_of: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of the rows called duplicates against exact all-pairs cosine >= threshold (a row is a
    true duplicate if it has an earlier kept row that similar, rows in order)."""
    from pipeline.select.neighbours import semantic_duplicates

    truth, called = semantic_duplicates(vectors, SEMANTIC_THRESHOLD, approximate=False) >= 0, dup_of >= 0
    return float((called & truth).sum() / max(called.sum(), 1)), float((called & truth).sum() / max(truth.sum(), 1))


def semantic_table(rows: list[str]) -> None:
    vectors = text_vectors(rows)
    print(f"\nsemantic dedup of the same {len(rows)} texts, vectors given to both, cosine >= {SEMANTIC_THRESHOLD}")
    print(f"{'method':24s} {'seconds':>8s} {'dups':>7s} {'precision':>10s} {'recall':>7s}")
    for name, method in (("ours", semantic_ours), ("semhash", semantic_semhash)):
        try:
            method(rows[:1000], vectors[:1000])  # warm-up, as above
            started = time.perf_counter()
            dup_of = method(rows, vectors)
        except ImportError:
            print(f"{name:24s} skipped: pip install -e .[bench]")
            continue
        seconds = time.perf_counter() - started
        precision, recall = semantic_quality(vectors, dup_of)
        print(f"{name:24s} {seconds:8.2f} {int((dup_of >= 0).sum()):7d} {precision:10.3f} {recall:7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40_000)
    args = parser.parse_args()
    rows = texts(args.n)
    results = {}
    for name, method in (("ours", ours), ("datasketch MinHashLSH", datasketch_plain), ("rensa", rensa_plain)):
        method(rows[:1000])  # warm-up: imports and first calls are not dedup work
        started = time.perf_counter()
        dup_of = method(rows)
        results[name] = (time.perf_counter() - started, int((dup_of >= 0).sum()), *quality(rows, dup_of))
    print(f"{args.n} texts, {NGRAM}-word shingles, {NUM_PERM} permutations, threshold {THRESHOLD}")
    print(f"{'method':24s} {'seconds':>8s} {'dups':>7s} {'precision':>10s} {'recall':>7s}")
    for name, (seconds, dups, precision, recall) in results.items():
        print(f"{name:24s} {seconds:8.2f} {dups:7d} {precision:10.3f} {recall:7.3f}")
    semantic_table(rows)


if __name__ == "__main__":
    main()
