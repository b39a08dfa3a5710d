"""Guide-Align's guideline library: the guidelines written per input (pipeline/synth/guide_align.py), deduplicated
by embedding with the greedy rule of deita's Repr Filter."""
from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.core.records import dump_meta, empty, meta_dicts, record_id
from pipeline.score.embed import MINILM, as_column, encode
from pipeline.select.selection import repr_filter
from pipeline.synth.guide_align import THRESHOLD


def build_library(df: pl.DataFrame, *, threshold: float = THRESHOLD, embedder: str = MINILM) -> pl.DataFrame:
    """Stage (whole input): the deduplicated guideline library, one record per guideline kept, in first-seen order."""
    texts, sources = [], []
    for rid, meta in zip(df["id"].to_list(), meta_dicts(df)):
        for guideline in meta["guide_align"]["written"]:
            texts.append(guideline)
            sources.append(rid)
    if not texts:
        return empty().select("id", "source", "messages", "embedding", "meta")
    vectors = encode(texts, model=embedder)
    kept = np.sort(repr_filter(vectors, np.zeros(len(texts)), k=len(texts), tau=threshold))
    # every guideline joins the first kept one it repeats (itself, if kept), so a library row lists all its sources
    owner = kept[np.argmax(vectors @ vectors[kept].T > threshold, axis=1)]
    owner[kept] = kept
    metas = [{"guideline": texts[i], "sources": sorted({sources[j] for j in np.flatnonzero(owner == i)}),
              "embedder": embedder, "threshold": threshold} for i in kept]
    frame = pl.DataFrame({"id": [record_id("guideline", texts[i]) for i in kept], "source": ["guide-align"] * len(kept),
                          "messages": [[] for _ in kept]}, schema_overrides={"messages": empty().schema["messages"]})
    return frame.with_columns(as_column(vectors[kept]), dump_meta(metas))
