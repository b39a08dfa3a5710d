"""Overlap and regurgitation audit (Barbero et al., arXiv 2510.18554): how much of a dataset is already in another,
measured by meaning as well as by string, since string similarity undercounts (a changed number, an added step).

Per row of the audited data: `ref_similarity`, the max embedding cosine to any reference row (>= 0.95 is counted as
semantic overlap, the paper's threshold), with `ref_nearest` that row's id; `ref_string_similarity`, the max
normalized Indel similarity to any reference text (rapidfuzz, in C); `ref_ngram_overlap`, the share of the row's word
n-grams found in the reference. Nothing is dropped: the audit measures. The extraction experiment audits
Magpie-style generations from a model's pre-query prefix against its suspected training data.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.select.selection import reference_overlap

SEMANTIC_THRESHOLD = 0.95
HISTOGRAM_BINS = 20


def audit(df: pl.DataFrame, *, against: str, field: str = "instruction", ngram: int = 8) -> pl.DataFrame:
    """Stage: the overlap columns of each row with the reference set at `against` (any file inputs.load reads)."""
    from rapidfuzz import process
    from rapidfuzz.distance import Indel

    from pipeline.core.inputs import InputError, load
    from pipeline.score.embed import texts

    reference = load(against)
    if reference.is_empty():
        raise InputError(f"{against}: no rows to audit against; pass a non-empty reference set")
    ref_texts = texts(reference, field)
    scored = reference_overlap(df, reference=ref_texts, reference_ids=reference["id"].to_list(), field=field, ngram=ngram)
    strings = [process.extractOne(text, ref_texts, scorer=Indel.normalized_similarity)[1] for text in texts(df, field)]
    return scored.with_columns(pl.Series("ref_string_similarity", strings, dtype=pl.Float64))


def summary(df: pl.DataFrame, threshold: float = SEMANTIC_THRESHOLD) -> dict:
    """Counts at the threshold by meaning and by string, and histograms of both similarities."""
    def histogram(column):
        values = np.clip(df[column].drop_nulls().to_numpy(), 0.0, 1.0)  # float rounding puts a copy at 1.0000001
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
        return {"edges": [round(e, 3) for e in edges.tolist()], "counts": counts.tolist()}

    semantic = int((df["ref_similarity"] >= threshold).sum())
    string = int((df["ref_string_similarity"] >= threshold).sum())
    return {"rows": df.height, "threshold": threshold, "semantic_overlap": semantic, "string_overlap": string,
            "ngram_overlap_any": int((df["ref_ngram_overlap"] > 0).sum()),
            "semantic_share": round(semantic / df.height, 4) if df.height else 0.0,
            "histograms": {"ref_similarity": histogram("ref_similarity"),
                           "ref_string_similarity": histogram("ref_string_similarity")}}
