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


# Bound on |SQ4 dot - exact dot| for unit vectors encoded as 4-bit residuals of their IVF centroid (each coordinate
# off by at most half a step of its trained range; summed over 384 dims with random signs, < 0.02 in practice).
# Candidates are then verified against the exact vectors, so the margin costs comparisons, not precision.
SQ_MARGIN = 0.03


def _kept_index(vectors: np.ndarray, approximate: bool):
    """An empty inner-product index for the rows kept so far, addressed by row number: exact (flat), or an IVF
    with 4-bit scalar-quantised residuals (4 sqrt(N) lists, nprobe 4) trained on a sample: an eighth of the memory
    of the vectors it holds, so a 5M-row dedup fits next to the embeddings themselves."""
    import faiss

    n, dim = vectors.shape
    if not approximate:
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    nlist = int(4 * np.sqrt(n))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_4bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter, index.cp.min_points_per_centroid = 10, 1
    index.train(vectors[np.sort(np.random.default_rng(0).choice(n, size=min(n, 16 * nlist), replace=False))])
    index.nprobe = 4
    return index


def semantic_duplicates(vectors: np.ndarray, threshold: float, *, block: int = 1024,
                        approximate: bool | None = None) -> np.ndarray:
    """For each row, -1 if kept, else the earliest earlier *kept* row whose cosine with it is >= `threshold` (rows
    taken in order: a duplicate of a dropped row is kept unless it also matches a kept one).

    Rows stream through in blocks against an index of the rows kept so far, so memory is that index (plus a block),
    never a pair list. Exact up to 200k rows; above, unless `approximate=False`, the kept rows live in an IVF-SQ4
    index searched with a margin and every candidate is verified against `vectors` (no false duplicates; recall is
    measured by bench/curate_scale.py, not guaranteed)."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned, range_search_preassigned

    n = len(vectors)
    approximate = n > 200_000 if approximate is None else approximate
    index = _kept_index(vectors, approximate)
    margin = SQ_MARGIN if approximate else 0.0
    radius, exact_radius = (float(np.nextafter(np.float32(t), np.float32(-1)))  # range_search keeps sim > radius
                            for t in (threshold - margin, threshold))
    dup_of = np.full(n, -1, dtype=np.int64)
    for start in range(0, n, block):
        x = np.ascontiguousarray(vectors[start:start + block], dtype=np.float32)
        rows = np.arange(start, start + len(x))
        if approximate:  # one coarse assignment per block serves the search and the add
            coarse, lists = index.quantizer.search(x, index.nprobe)
        if index.ntotal:
            lims, sims, labels = (range_search_preassigned(index, x, radius, lists, coarse) if approximate
                                  else index.range_search(x, radius))
            owner = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64)))
            if approximate:  # the quantised similarity only nominates; the exact one decides
                sims = np.einsum("ij,ij->i", x[owner], vectors[labels])
            hit = sims >= np.float32(threshold)  # in float32, as faiss compared them
            earliest = np.full(len(x), n, dtype=np.int64)
            np.minimum.at(earliest, owner[hit], labels[hit])
            dup_of[rows] = np.where(earliest < n, earliest, -1)
        # Within the block, in order: a row not matched above duplicates its first earlier kept block row. Searched
        # with faiss too: numpy's BLAS threads, interleaved with faiss's, would spin against each other (2x slower).
        block_index = faiss.IndexFlatIP(x.shape[1])
        block_index.add(x)
        pairs, _, partners = block_index.range_search(x, exact_radius)
        pairs = pairs.astype(np.int64)
        for i in np.flatnonzero(np.diff(pairs) > 1):  # rows with a partner besides themselves
            earlier = np.sort(partners[pairs[i]:pairs[i + 1]])
            earlier = earlier[earlier < i]
            kept = earlier[dup_of[rows[earlier]] < 0]
            if dup_of[rows[i]] < 0 and len(kept):
                dup_of[rows[i]] = rows[kept[0]]
        fresh = np.flatnonzero(dup_of[rows] < 0)
        ids = rows[fresh]  # named: add_preassigned keeps only a raw pointer to its `ids` argument
        if approximate:
            add_preassigned(index, x[fresh], np.ascontiguousarray(lists[fresh, 0]), ids)
        else:
            index.add_with_ids(x[fresh], ids)
    return dup_of
