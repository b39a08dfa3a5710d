"""Magpie's repetition metrics over unit embeddings: each row's nearest neighbours (faiss, exact up to 200k rows,
IVF above), searched in blocks so memory follows the block, not the dataset."""
from __future__ import annotations

import numpy as np

NEIGHBOURS = 500  # Magpie's repetition search: the 500 nearest neighbours of each row


def _knn_index(vectors: np.ndarray, approximate: bool):
    """An exact L2 index, or above 200k rows an IVF one (4 sqrt(N) lists, nprobe 8) trained on a sample."""
    import faiss

    n, dim = vectors.shape
    if not approximate:
        index = faiss.IndexFlatL2(dim)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.cp.niter, index.cp.min_points_per_centroid = 10, 1
        index.train(vectors[np.sort(np.random.default_rng(0).choice(n, size=min(n, 16 * nlist), replace=False))])
        index.nprobe = 8
    index.add(vectors)
    return index


def min_neighbor_distance(vectors: np.ndarray, *, repeat_threshold: float = 0.05, neighbours: int = NEIGHBOURS,
                          block: int = 4096, approximate: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magpie's repetition metrics from each row's `neighbours` nearest rows (squared L2 over unit vectors, as the
    reference's faiss IndexFlatL2 search of 500 neighbours), searched in blocks so memory stays bounded; exact up
    to 200k rows, IVF above unless `approximate=False`.

    Returns (min squared distance to another row, repeat count = neighbours within `repeat_threshold`, at most
    `neighbours` - 1, index of the lowest-index row of that set if lower than the row itself, else -1).
    """
    n = len(vectors)
    index = _knn_index(vectors, n > 200_000 if approximate is None else approximate)
    k = min(neighbours, n)
    nearest, counts, first = np.full(n, np.nan), np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    for start in range(0, n, block):
        distances, labels = index.search(vectors[start:start + block], k)
        own = np.arange(start, start + len(distances))[:, None]
        others = (labels != own) & (labels >= 0)
        if k > 1:
            nearest[start:start + len(distances)] = np.where(others, distances, np.inf).min(1)
        close = others & (distances < repeat_threshold)
        counts[start:start + len(distances)] = close.sum(1)
        lowest = np.where(close, labels, np.iinfo(np.int64).max).min(1)
        first[start:start + len(distances)] = np.where(lowest < own[:, 0], lowest, -1)
    return np.maximum(nearest, 0.0), counts, first
