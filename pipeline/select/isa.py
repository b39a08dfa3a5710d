"""Information-theoretic subsampling (ISA) and the exponential-plateau budget.

Khera, Ghosh, Dutta, "Efficient Alignment of Large Language Models via Data Sampling" (arXiv 2411.10545)
describe ISA as a two-component Gaussian mixture plus entropy-based sampling that matches full-data
alignment with 3.5-10% of the data. No code or full algorithm is public, so this is a reconstruction
(documented in README "Methods"): what is published is the GMM with two components, entropy-based
selection to a budget, and the plateau shape; what is ours is the feature space (a score column,
plus the top principal components of the embeddings), the choice of the "high" component (the one
with the larger mean score) and the information measure (surprisal -log p(x) under the mixture, i.e.
the sample's information content; "posterior" entropy is available as the alternative).
"""
from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.score.embed import matrix

MEASURES = ("surprisal", "posterior_entropy")


def isa_select(features: np.ndarray, budget: int, *, seed: int = 0, measure: str = "surprisal") -> np.ndarray:
    """Row indices of `budget` rows: the most informative rows of the high component first (column 0 of
    `features` decides which component is "high"), then of the other; ties keep row order."""
    from sklearn.mixture import GaussianMixture

    if measure not in MEASURES:
        raise ValueError(f"unknown ISA measure {measure!r}; valid: {list(MEASURES)}")
    n = len(features)
    budget = min(budget, n)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    gmm = GaussianMixture(n_components=2, covariance_type="full", random_state=seed).fit(features)
    high = int(np.argmax(gmm.means_[:, 0]))
    posterior = gmm.predict_proba(features)
    if measure == "surprisal":
        information = -gmm.score_samples(features)
    else:
        information = -(posterior * np.log(np.clip(posterior, 1e-300, 1.0))).sum(1)
    in_high = posterior.argmax(1) == high
    order = np.lexsort((np.arange(n), -information, ~in_high))  # high component first, then most informative
    return order[:budget].astype(np.int64)


def features(df: pl.DataFrame, *, score: str = "deita_score", components: int = 8, seed: int = 0) -> np.ndarray:
    """[standardized score, top principal components of the embeddings] per row."""
    from sklearn.decomposition import PCA

    values = df[score].cast(pl.Float64).to_numpy()  # rows without a score never get here: nothing is imputed
    columns = [(values - values.mean()) / (values.std() or 1.0)]
    if "embedding" in df.columns and df["embedding"].null_count() == 0 and df.height > components:
        projected = PCA(n_components=components, random_state=seed).fit_transform(matrix(df))
        columns.extend((projected / (projected.std(0) + 1e-12)).T)
    return np.column_stack(columns)


def isa(df: pl.DataFrame, *, budget: int | None = None, fraction: float | None = 0.1, score: str = "deita_score",
        seed: int = 0, measure: str = "surprisal") -> pl.DataFrame:
    """Stage: keep `budget` rows (or `fraction` of the rows with a score) chosen by isa_select, in selection order;
    rows without a score are marked "null_score", the others "not_selected"."""
    from pipeline.select.selection import keep_scored_in_order

    def pick(scored: pl.DataFrame) -> np.ndarray:
        size = budget if budget is not None else int(round((fraction or 0.0) * scored.height))
        return isa_select(features(scored, score=score, seed=seed), size, seed=seed, measure=measure)

    return keep_scored_in_order(df, score, pick)


def plateau(n: np.ndarray, p_max: float, p_0: float, k: float) -> np.ndarray:
    """P(n) = P_max - (P_max - P_0) * exp(-k n)."""
    return p_max - (p_max - p_0) * np.exp(-k * n)


def fit_plateau(sizes, scores) -> dict:
    """Fit the exponential plateau to (data size, performance) points; `n_at(f)` gives the size reaching
    fraction f of the gain, `n_90` the size for 90%."""
    from scipy.optimize import curve_fit

    n, p = np.asarray(sizes, dtype=float), np.asarray(scores, dtype=float)
    guess = (p.max(), p.min(), 1.0 / max(np.median(n), 1e-9))
    (p_max, p_0, k), _ = curve_fit(plateau, n, p, p0=guess, maxfev=20000)
    return {"p_max": float(p_max), "p_0": float(p_0), "k": float(k), "n_90": float(np.log(10) / k)}


def budget_for(fit: dict, fraction: float = 0.9) -> int:
    """Smallest data size whose fitted performance reaches `fraction` of the gain P_max - P_0.

    >>> budget_for({"k": np.log(10) / 1000}, 0.9)
    1000
    """
    return int(np.ceil(-np.log(1 - fraction) / fit["k"] - 1e-9))
