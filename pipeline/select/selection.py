"""Selection and dedup over embeddings: deita's Repr Filter, Magpie's min-neighbour distance, exact /
MinHash / semantic dedup, and information-theoretic subsampling (ISA, reconstructed).

Array functions take unit-norm float32 vectors and return row indices; the stage functions around them
mark dropped rows with `drop_reason` and keep kept rows in selection order.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl

from pipeline.core.devices import import_faiss, torch_device
from pipeline.select.neighbours import min_neighbor_distance, semantic_duplicates
from pipeline.score.embed import matrix



def _index(dim: int):
    """An exact inner-product faiss index (on the CPU; the Repr Filter itself runs on CUDA when available)."""
    faiss = import_faiss()
    return faiss.IndexFlatIP(dim)


# Bound on |bf16 dot - exact dot| for unit vectors: inputs rounded to bf16 (unit roundoff u = 2**-8) give a
# product error <= (2u + u^2) * sum|x_i y_i| <= 0.0079, plus fp32 accumulation (< 1e-4 at d <= 4096).
BF16_MARGIN = 0.01


def repr_filter(vectors: np.ndarray, scores: np.ndarray, *, k: int, tau: float = 0.9, block: int = 2048,
                device: str | None = None) -> np.ndarray:
    """deita's Repr Filter: row indices, in selection order, of up to `k` rows taken greedily by score.

    Rows are visited by descending score (stable: ties keep row order; NaN scores come last); a row is
    kept iff its cosine similarity to every row already kept is <= tau. Identical in effect to the
    official one-candidate-at-a-time loop (batch_size=1), computed in blocks of candidates:
    1. against the kept set, with a bf16 matrix product whose error is provably below BF16_MARGIN;
       only the (candidate, kept row) pairs within that margin of tau are re-computed in fp32
       (similarity to the kept set only grows, so a rejection here is final);
    2. among the block's survivors, in order, using their Gram matrix; only rows with an earlier
       conflicting row need the sequential pass.
    Runs on CUDA when available (or `device`), else CPU.
    """
    import torch

    n = len(vectors)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    device = torch_device(device)
    order = np.argsort(-np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf), kind="stable")
    kept_fp32 = torch.empty((k, vectors.shape[1]), dtype=torch.float32, device=device)
    kept_bf16 = torch.empty((k, vectors.shape[1]), dtype=torch.bfloat16, device=device)
    selected: list[int] = []
    for start in range(0, n, block):
        candidates = order[start:start + block]
        x = torch.from_numpy(np.asarray(vectors[candidates], dtype=np.float32)).to(device)  # a block, not the matrix
        m = len(selected)
        if m:
            # Only (candidate, kept) pairs within the bf16 error margin of tau can exceed it: check those in fp32.
            rows, cols = torch.nonzero(torch.mm(x.bfloat16(), kept_bf16[:m].T).float() > tau - BF16_MARGIN, as_tuple=True)
            similar = (x[rows] * kept_fp32[cols]).sum(1) > tau
            alive = torch.ones(len(x), dtype=torch.bool, device=device)
            alive[rows[similar]] = False
            keep_rows = torch.nonzero(alive).flatten()
            candidates, x = candidates[keep_rows.cpu().numpy()], x[keep_rows]
        keep = _greedy_within(torch.mm(x, x.T) > tau, limit=k - m)
        chosen = torch.from_numpy(keep).to(device)
        kept_fp32[m:m + len(keep)] = x[chosen]
        kept_bf16[m:m + len(keep)] = x[chosen].bfloat16()
        selected.extend(candidates[keep].tolist())
        if len(selected) >= k:
            break
    return np.asarray(selected[:k], dtype=np.int64)


def _greedy_within(conflict, limit: int) -> np.ndarray:
    """Indices kept by the in-order greedy rule given a boolean conflict matrix (i, j similar), at most `limit`."""
    import torch

    earlier = torch.tril(conflict, diagonal=-1).cpu().numpy()
    kept = np.ones(len(earlier), dtype=bool)
    for j in np.flatnonzero(earlier.any(1)):  # rows with no earlier conflict are kept whatever happens
        kept[j] = not kept[np.flatnonzero(earlier[j])].any()
    return np.flatnonzero(kept)[:limit]


# --- stages -------------------------------------------------------------------------------------------


def _mark(df: pl.DataFrame, dropped: np.ndarray, reason: str) -> pl.Series:
    existing = df["drop_reason"] if "drop_reason" in df.columns else pl.Series([None] * df.height, dtype=pl.String)
    return existing.zip_with(pl.Series(~dropped), pl.Series([reason] * df.height, dtype=pl.String)).alias("drop_reason")


def _ids_at(df: pl.DataFrame, rows: np.ndarray, name: str = "dup_of") -> pl.Series:
    """The id of row `rows[i]` for each i, null where rows[i] < 0."""
    ids = df["id"].gather(np.maximum(rows, 0))
    return pl.select(pl.when(pl.Series(rows >= 0)).then(ids).otherwise(None).alias(name)).to_series()


def keep_in_order(df: pl.DataFrame, picked: np.ndarray) -> pl.DataFrame:
    """Rows `picked` first, in that order, then the others in row order, marked "not_selected".

    The embeddings are not copied: the picked vectors are gathered and the others are zero-copy slices of the
    column between them, so selecting 100k of 5M rows does not hold 5M vectors twice (the other columns, a few
    percent of the bytes, are gathered)."""
    picked = np.asarray(picked, dtype=np.int64)
    chosen = np.zeros(df.height, dtype=bool)
    chosen[picked] = True
    marked = df.with_columns(_mark(df, ~chosen, "not_selected"))
    out = marked.drop("embedding", strict=False)[np.concatenate([picked, np.flatnonzero(~chosen)])]
    if "embedding" not in df.columns:
        return out
    vectors = marked["embedding"]
    bounds = np.r_[-1, np.sort(picked), df.height]
    rest = [vectors.slice(a + 1, b - a - 1) for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 1]
    return out.with_columns(pl.concat([vectors.gather(picked), *rest], rechunk=False)).select(df.columns + [
        c for c in out.columns if c not in df.columns])


def unit_matrix(df: pl.DataFrame, where: str = "input") -> np.ndarray:
    """The embeddings as a float32 matrix, checked: every vector finite and of unit norm (the Repr Filter's
    cosine rule and its bf16 error bound assume it)."""
    vectors = matrix(df)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors)) if len(vectors) else np.zeros(0)  # no n x d temporary
    bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1.0) > 1e-3))
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"{where}: row {row} (id={df['id'][row]!r}) has an embedding of norm {norms[row]:.4g} "
                         f"({len(bad)} such rows); selection needs finite unit vectors: normalise them (v / ||v||) "
                         "or embed with aligndata")
    return vectors


def scored_rows(values: pl.Series) -> np.ndarray:
    """Indices of the rows with a score (not null, not NaN): only these can be selected."""
    values = values.cast(pl.Float64)
    return np.flatnonzero((values.is_not_null() & ~values.is_nan().fill_null(False)).to_numpy())


def keep_scored_in_order(df: pl.DataFrame, score: str, pick) -> pl.DataFrame:
    """Rows picked by `pick(rows with a score)` first, in selection order; rows without a score are marked
    "null_score" (counted, never selected, never imputed), the others "not_selected"."""
    if score not in df.columns:
        raise ValueError(f"no {score!r} column to select by; valid score columns: "
                         f"{[c for c, t in df.schema.items() if t.is_numeric()]}")
    valid = scored_rows(df[score])
    scored = df if len(valid) == df.height else df[valid]  # no copy of a frame whose rows all have a score
    picked = valid[pick(scored)] if len(valid) else np.zeros(0, dtype=np.int64)
    unscored = np.setdiff1d(np.arange(df.height), valid)
    out = keep_in_order(df.with_row_index("_row"), picked)
    return out.with_columns(pl.when(pl.col("_row").is_in(unscored.tolist())).then(pl.lit("null_score"))
                            .otherwise(pl.col("drop_reason")).alias("drop_reason")).drop("_row")


def diverse_top_k(df: pl.DataFrame, *, k: int, tau: float = 0.9, score: str = "deita_score") -> pl.DataFrame:
    """Stage: keep the Repr Filter's `k` rows (by `score`, descending), in selection order; mark the rest."""
    return keep_scored_in_order(df, score, lambda scored: repr_filter(
        unit_matrix(scored), scored[score].cast(pl.Float64).to_numpy(), k=k, tau=tau))


def neighbors(df: pl.DataFrame, *, repeat_threshold: float = 0.05) -> pl.DataFrame:
    """Stage: Magpie's `min_neighbor_distance` and `dup_of` (first row of its near-duplicate group)."""
    distance, _, first = min_neighbor_distance(matrix(df), repeat_threshold=repeat_threshold)
    return df.with_columns(pl.Series("min_neighbor_distance", distance.astype(np.float64)), _ids_at(df, first))


def normalized_text(df: pl.DataFrame, field: str = "instruction") -> pl.Series:
    """Case- and whitespace-folded text used by exact and MinHash dedup."""
    from filters.conversation import folded
    from pipeline.core.records import first_instruction
    from pipeline.score.embed import texts

    if field == "instruction":  # in Polars: millions of conversations never become Python dicts
        return df.select(folded(first_instruction()).alias("text")).to_series()
    return pl.DataFrame({"text": texts(df, field)}, schema={"text": pl.String}).select(folded(pl.col("text"))).to_series()


def dedup(df: pl.DataFrame, *, method: str = "exact", field: str = "instruction", threshold: float | None = None,
          num_perm: int = 128, ngram: int = 5) -> pl.DataFrame:
    """Stage: mark every row that duplicates an earlier kept row (`drop_reason = "dup_<method>"`, `dup_of` = its id).

    exact: identical normalized text; minhash: estimated Jaccard of word n-grams >= threshold (default 0.7; rensa
    signatures, LSH candidates verified; minhash_duplicates); semantic: embedding cosine >= threshold (default 0.95).
    """
    n = df.height
    if method == "exact":
        key = normalized_text(df, field)
        first = pl.DataFrame({"key": key, "row": np.arange(n)}).select(pl.col("row").first().over("key"))["row"].to_numpy()
        dup_of = np.where(first < np.arange(n), first, -1)
    elif method == "minhash":
        signatures = minhash_signatures(normalized_text(df, field).to_list(), num_perm=num_perm, ngram=ngram)
        dup_of = minhash_duplicates(signatures, threshold or 0.7)
    elif method == "semantic":
        dup_of = semantic_duplicates(matrix(df), threshold or 0.95)
    else:
        raise ValueError(f"unknown dedup method {method!r}; valid: ['exact', 'minhash', 'semantic']")
    return df.with_columns(_mark(df, dup_of >= 0, f"dup_{method}"), _ids_at(df, dup_of))


def minhash_signatures(texts: list[str], *, num_perm: int = 128, ngram: int = 5, chunk: int = 20_000) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures of word n-gram shingles, seed 1, computed by rensa (a maintained Rust
    MinHash: 10x datasketch's speed here, bench/dedup.py) in chunks of `chunk` rows."""
    from rensa import RMinHash

    def shingles(text):
        words = text.split()
        return [" ".join(words[i:i + ngram]) for i in range(max(len(words) - ngram + 1, 1))]

    signatures = np.empty((len(texts), num_perm), dtype=np.uint32)
    for start in range(0, len(texts), chunk):
        digests = RMinHash.digest_matrix_from_token_sets([shingles(t) for t in texts[start:start + chunk]], num_perm, 1)
        rows = digests.to_rows()
        signatures[start:start + len(rows)] = np.asarray(rows, dtype=np.uint32).reshape(len(rows), num_perm)
    return signatures


@lru_cache(maxsize=32)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) by datasketch's rule, weighing a missed duplicate 9x a false candidate: every candidate
    is verified against the signatures, so a false one costs a comparison while a missed one stays in the data."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.1, 0.9)


def minhash_duplicates(signatures: np.ndarray, threshold: float) -> np.ndarray:
    """For each row, -1 if kept, else the earliest kept row that shares an LSH band bucket with it and whose signature
    agrees on at least `threshold` of the slots (estimated Jaccard), rows taken in order. Only kept rows enter the
    buckets, so a group of m near-copies costs m lookups, not m² pairs."""
    n, num_perm = signatures.shape
    bands, width = lsh_bands(threshold, num_perm)
    buckets = np.empty((n, bands), dtype=np.int32)  # bucket numbers < rows
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * width:(band + 1) * width])
        buckets[:, band] = np.unique(block.view(np.dtype((np.void, block.dtype.itemsize * width))).ravel(),
                                     return_inverse=True)[1].ravel()
    # A row alone in every one of its buckets has no candidate and is no row's candidate: kept, and skipped below.
    shared = np.zeros(n, dtype=bool)
    for band in range(bands):
        shared |= np.bincount(buckets[:, band])[buckets[:, band]] > 1
    kept_in: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    dup_of = np.full(n, -1, dtype=np.int64)
    for i, row in zip(np.flatnonzero(shared).tolist(), buckets[shared].tolist()):
        candidates = sorted({j for band, bucket in enumerate(row) for j in kept_in[band].get(bucket, ())})
        match = next((j for j in candidates if (signatures[i] == signatures[j]).mean() >= threshold), -1)
        if match >= 0:
            dup_of[i] = match
        else:
            for band, bucket in enumerate(row):
                kept_in[band].setdefault(bucket, []).append(i)
    return dup_of


def top_k(df: pl.DataFrame, *, k: int, column: str, descending: bool = True) -> pl.DataFrame:
    """Stage: keep the `k` rows with the highest (or lowest) `column`, stable, nulls last; mark the rest."""
    ranked = df.with_row_index("_row").filter(pl.col(column).is_not_null())
    return keep_in_order(df, ranked.sort(column, descending=descending, maintain_order=True)["_row"].head(k).to_numpy())


def word_ngrams(text: str, n: int) -> set[str]:
    """Lower-cased word n-grams of a text (all of it when shorter than n).

    >>> sorted(word_ngrams("The cat sat", 2))
    ['cat sat', 'the cat']
    """
    words = text.lower().split()
    return {" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))} if words else set()


def reference_overlap(df: pl.DataFrame, *, reference: list[str], reference_vectors: np.ndarray | None = None,
                      reference_ids: list[str] | None = None, field: str = "instruction", ngram: int = 8) -> pl.DataFrame:
    """Stage: `ref_similarity` (max embedding cosine to any reference text) and `ref_ngram_overlap` (share
    of the row's word n-grams found in the reference set), for decontamination against eval sets; with
    `reference_ids`, also `ref_nearest`, the id of the most similar reference row."""
    from pipeline.score.embed import encode, texts

    rows = texts(df, field)
    reference_grams = set().union(*(word_ngrams(t, ngram) for t in reference)) if reference else set()
    overlap = [len(g & reference_grams) / len(g) if (g := word_ngrams(t, ngram)) else 0.0 for t in rows]
    ref = encode(reference) if reference_vectors is None else reference_vectors
    index = _index(ref.shape[1])
    index.add(np.ascontiguousarray(ref, dtype=np.float32))
    # Both sides in the same (default) embedding space, whatever embedder the `embedding` column came from.
    similarity, nearest = index.search(encode(rows), 1)
    out = df.with_columns(pl.Series("ref_similarity", similarity[:, 0].astype(np.float64)),
                          pl.Series("ref_ngram_overlap", overlap, dtype=pl.Float64))
    if reference_ids is None:
        return out
    return out.with_columns(pl.Series("ref_nearest", [reference_ids[i] for i in nearest[:, 0]], dtype=pl.String))


def select_table(table: pl.DataFrame, *, k: int, tau: float = 0.9, score: str | None = None, where: str = "input") -> pl.DataFrame:
    """Repr Filter over any table with `id`, `embedding` and a score: the selected rows in selection order.

    The score is `score`, else `deita_score`, else complexity x quality (summed over turns when they are lists).
    """
    missing = [c for c in ("id", "embedding") if c not in table.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; `select` needs id, embedding and a score")
    if score is None and "deita_score" not in table.columns:
        if not {"complexity", "quality"} <= set(table.columns):
            raise ValueError(f"{where}: no score column; pass --score, or provide deita_score, or complexity and quality")
        c, q = table["complexity"], table["quality"]
        values = (c * q).list.sum() if c.dtype == pl.List(pl.Float64) or isinstance(c.dtype, pl.List) else c * q
    else:
        name = score or "deita_score"
        if name not in table.columns:
            raise ValueError(f"{where}: no column {name!r}; columns are {table.columns}")
        values = table[name]
    valid = scored_rows(values)  # rows without a score are never selected
    table, values = table[valid], values.cast(pl.Float64)[valid]
    return table[repr_filter(unit_matrix(table, where), values.to_numpy(), k=k, tau=tau)]


def decontaminate(df: pl.DataFrame, *, reference: str, field: str = "instruction", max_similarity: float = 0.95,
                  max_ngram_overlap: float = 0.5, ngram: int = 8) -> pl.DataFrame:
    """Stage: overlap with a reference set (any file `pipeline.core.inputs` reads; its first user turns); rows at
    or above either threshold are dropped by the `not_contaminated` filter (their drop_reason)."""
    import filters
    from pipeline.score.embed import texts
    from pipeline.core.inputs import load

    scored = reference_overlap(df, reference=texts(load(reference), field), field=field, ngram=ngram)
    return filters.mark(scored, [{"name": "not_contaminated", "max_similarity": max_similarity,
                                  "max_ngram_overlap": max_ngram_overlap}])
