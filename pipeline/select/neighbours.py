"""Nearest neighbours over unit embeddings with faiss: Magpie's repetition metrics (each row's 500 nearest rows) and
semantic dedup (each row against the rows kept so far), searched in blocks so memory follows the block.

On a host with GPU faiss (the `gpu` extra's faiss-gpu wheel and a CUDA device) the kNN indexes and the approximate
dedup index (IVF of 4-bit codes, above 200k rows) live on the GPU; GPU faiss has no range search, so there the dedup
takes each row's nearest kept rows by kNN (KNN_CANDIDATES), verifies them on the exact vectors as on the CPU, and
compares a row whose every candidate is a match with all kept rows exactly. The exact flat dedup (up to 200k rows)
stays on the CPU. ALIGNDATA_FAISS_GPU=0 keeps everything on the CPU.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from pipeline.core.devices import import_faiss

NEIGHBOURS = 500  # Magpie's repetition search: the 500 nearest neighbours of each row
KNN_CANDIDATES = 256  # nearest kept rows a GPU dedup search takes per row (GPU faiss selects at most 2048)


def faiss_gpus() -> int:
    """GPUs faiss can use here: 0 with faiss-cpu, without a CUDA device, or with ALIGNDATA_FAISS_GPU=0."""
    faiss = import_faiss()
    if os.environ.get("ALIGNDATA_FAISS_GPU", "1") == "0" or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return faiss.get_num_gpus()


@lru_cache(maxsize=1)
def _gpu_resources():
    return import_faiss().StandardGpuResources()


def on_gpu(index):
    """`index` copied to the first GPU (flat, IVF-flat and IVF-SQ indexes have GPU twins)."""
    return import_faiss().index_cpu_to_gpu(_gpu_resources(), 0, index)


def _knn_index(vectors: np.ndarray, approximate: bool):
    """An exact L2 index, or above 200k rows an IVF one (4 sqrt(N) lists, nprobe 8) trained on a sample."""
    faiss = import_faiss()
    n, dim = vectors.shape
    if not approximate:
        index = faiss.IndexFlatL2(dim)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.cp.niter, index.cp.min_points_per_centroid = 10, 1
        index.train(vectors[np.sort(np.random.default_rng(0).choice(n, size=min(n, 16 * nlist), replace=False))])
        index.nprobe = 8
    if faiss_gpus():
        index = on_gpu(index)
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
    faiss = import_faiss()
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
                        approximate: bool | None = None, candidates: str = "auto",
                        knn_candidates: int = KNN_CANDIDATES) -> np.ndarray:
    """For each row, -1 if kept, else the earliest earlier *kept* row whose cosine with it is >= `threshold` (rows
    taken in order: a duplicate of a dropped row is kept unless it also matches a kept one).

    Rows stream through in blocks against an index of the rows kept so far, so memory is that index (plus a block),
    never a pair list. Exact up to 200k rows; above, unless `approximate=False`, the kept rows live in an IVF-SQ4
    index searched with a margin and every candidate is verified against `vectors` (no false duplicates; recall is
    measured by bench/curate_scale.py, not guaranteed). `candidates` says how that index nominates: "range" (a range
    search, CPU faiss), "knn" (the `knn_candidates` nearest, what GPU faiss can do; a row whose every candidate
    matches is compared with all kept rows exactly) or "auto" (knn where the index is on a GPU)."""
    from faiss.contrib.ivf_tools import add_preassigned, range_search_preassigned

    faiss = import_faiss()
    if candidates not in ("auto", "range", "knn"):
        raise ValueError(f"unknown candidates {candidates!r}; valid: ['auto', 'range', 'knn']")
    n = len(vectors)
    approximate = n > 200_000 if approximate is None else approximate
    index = _kept_index(vectors, approximate)
    knn = approximate and (candidates == "knn" or (candidates == "auto" and faiss_gpus() > 0))
    if knn and faiss_gpus():
        index = on_gpu(index)
    margin = SQ_MARGIN if approximate else 0.0
    radius, exact_radius = (float(np.nextafter(np.float32(t), np.float32(-1)))  # range_search keeps sim > radius
                            for t in (threshold - margin, threshold))
    dup_of = np.full(n, -1, dtype=np.int64)
    for start in range(0, n, block):
        x = np.ascontiguousarray(vectors[start:start + block], dtype=np.float32)
        rows = np.arange(start, start + len(x))
        if approximate and not knn:  # one coarse assignment per block serves the search and the add
            coarse, lists = index.quantizer.search(x, index.nprobe)
        if index.ntotal:
            if knn:
                owner, labels, saturated = _knn_candidates(index, x, radius, knn_candidates)
            else:
                lims, sims, labels = (range_search_preassigned(index, x, radius, lists, coarse) if approximate
                                      else index.range_search(x, radius))
                owner, saturated = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64))), np.zeros(0, np.int64)
            if approximate:  # the quantised similarity only nominates; the exact one decides
                sims = np.einsum("ij,ij->i", x[owner], vectors[labels])
            hit = sims >= np.float32(threshold)  # in float32, as faiss compared them
            earliest = np.full(len(x), n, dtype=np.int64)
            np.minimum.at(earliest, owner[hit], labels[hit])
            if len(saturated):  # more matches than candidates: the earliest may be among the others
                earliest[saturated] = _earliest_match(x[saturated], vectors, np.flatnonzero(dup_of[:start] < 0),
                                                      threshold, n)
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
        if approximate and not knn:
            add_preassigned(index, x[fresh], np.ascontiguousarray(lists[fresh, 0]), ids)
        else:
            index.add_with_ids(x[fresh], ids)
    return dup_of


def _knn_candidates(index, x: np.ndarray, radius: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, kept row) pairs whose approximate similarity passes `radius`, from each query's `k` nearest kept
    rows, and the queries whose k-th nearest still passes it (they may have more matches than k)."""
    k = min(k, index.ntotal, 2048)
    sims, labels = index.search(x, k)
    close = (sims > radius) & (labels >= 0)
    owner, column = np.nonzero(close)
    saturated = np.flatnonzero(close[:, -1])
    return owner, labels[owner, column], saturated


def _earliest_match(x: np.ndarray, vectors: np.ndarray, kept: np.ndarray, threshold: float, none: int,
                    chunk: int = 65_536) -> np.ndarray:
    """For each row of `x`, the lowest kept row (of `kept`, ascending) whose exact cosine with it is >= `threshold`,
    else `none`; compared chunk by chunk of kept rows, so it stops at the first chunk with a match."""
    found = np.full(len(x), none, dtype=np.int64)
    todo = np.arange(len(x))
    for begin in range(0, len(kept), chunk):
        ids = kept[begin:begin + chunk]
        hits = (x[todo] @ vectors[ids].T) >= np.float32(threshold)
        matched = hits.any(1)
        found[todo[matched]] = ids[hits[matched].argmax(1)]
        todo = todo[~matched]
        if not len(todo):
            break
    return found
