"""s1-style selection of reasoning problems (Muennighoff et al., s1: Simple test-time scaling, arXiv 2501.19393): a
budget of problems chosen for difficulty and diversity. s1 kept problems its models failed and sampled domains
uniformly, preferring longer traces; ours measures difficulty by the problem's pass rate (1 - pass rate: the share of
the teacher's own samples that were wrong) and gets diversity from deita's Repr Filter over problem embeddings
(pipeline.select.selection.repr_filter): problems are taken hardest first, and one is skipped while it is within
`tau` cosine of a problem already taken. Equal difficulty: the longer trace first (s1's preference), then row order.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.select.selection import repr_filter, unit_matrix


def select_problems(df: pl.DataFrame, *, k: int, tau: float = 0.9, max_pass_rate: float = 1.0) -> pl.DataFrame:
    """Stage (all rows at once): the traces of the `k` problems chosen by difficulty and diversity, in selection order;
    problems above `max_pass_rate` are dropped as `too_easy`, those not chosen as `not_selected`."""
    from pipeline.synth.distill import trace_length

    problem = pl.coalesce("parent_id", "id").alias("_problem")
    easy = pl.col("pass_rate").is_null() | (pl.col("pass_rate") > max_pass_rate)
    rows = df.with_row_index("_order").with_columns(problem, trace_length().alias("_length"), easy.alias("_easy"))
    candidates = (rows.filter(~pl.col("_easy")).sort("_length", descending=True, maintain_order=True)
                  .group_by("_problem", maintain_order=True).first()
                  .sort([pl.col("pass_rate"), pl.col("_length")], descending=[False, True], maintain_order=True))
    picked = repr_filter(unit_matrix(candidates, "problems"), (1.0 - candidates["pass_rate"]).to_numpy(), k=k, tau=tau) \
        if candidates.height else np.zeros(0, dtype=np.int64)
    rank = {p: i for i, p in enumerate(candidates["_problem"].gather(picked).to_list())}
    rows = rows.with_columns(pl.col("_problem").replace_strict(rank, default=None, return_dtype=pl.Int64).alias("_rank"))
    earlier = pl.col("drop_reason") if "drop_reason" in rows.columns else pl.lit(None, dtype=pl.String)
    reason = (pl.when(earlier.is_not_null()).then(earlier).when(pl.col("_easy")).then(pl.lit("too_easy"))
              .when(pl.col("_rank").is_null()).then(pl.lit("not_selected")).otherwise(None))
    out = rows.with_columns(reason.alias("drop_reason")).sort(["_rank", "_order"], nulls_last=True, maintain_order=True)
    return out.drop("_order", "_problem", "_length", "_easy", "_rank")
