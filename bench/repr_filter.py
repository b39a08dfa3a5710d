"""deita Repr Filter: ours (blocked, faiss) vs a straightforward re-implementation of the official algorithm
(torch: each candidate's cosine against the selected set, one candidate at a time), same data, one run.

    python bench/repr_filter.py --n 200000 --dim 384 --k 20000
Checks the selections are identical and prints the speed ratio (target >= 20x).
Data: clustered unit vectors (within-cluster cosine about 0.9), so both keep and reject decisions occur.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.select.selection import repr_filter


def clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 8, 1), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.33 * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors, dtype=np.float32), rng.random(n)


def official_loop(vectors: np.ndarray, scores: np.ndarray, k: int, tau: float, chunk: int = 100_000) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    data = torch.from_numpy(vectors)
    selected = torch.empty((k, vectors.shape[1]), dtype=torch.float32)
    chosen = []
    for i in order:
        x = data[i]
        m = len(chosen)
        if m:
            best = max(float(torch.mv(selected[s:min(s + chunk, m)], x).max()) for s in range(0, m, chunk))
            if best > tau:
                continue
        selected[m] = x
        chosen.append(int(i))
        if len(chosen) == k:
            break
    return np.asarray(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=20_000)
    parser.add_argument("--tau", type=float, default=0.9)
    args = parser.parse_args()
    vectors, scores = clustered(args.n, args.dim)
    started = time.perf_counter()
    ours = repr_filter(vectors, scores, k=args.k, tau=args.tau)
    t_ours = time.perf_counter() - started
    started = time.perf_counter()
    reference = official_loop(vectors, scores, args.k, args.tau)
    t_ref = time.perf_counter() - started
    print(f"N={args.n} d={args.dim} k={args.k} tau={args.tau}: selected {len(ours)} (reference {len(reference)})")
    print(f"identical selection: {np.array_equal(ours, reference)}")
    print(f"ours {t_ours:.2f} s   official-style loop {t_ref:.2f} s   speed-up {t_ref / t_ours:.1f}x   target >= 20x")


if __name__ == "__main__":
    main()
