import numpy as np
import polars as pl
import pytest

from pipeline.select import selection
from pipeline.score.embed import as_column
from pipeline.select.neighbours import semantic_duplicates
from pipeline.select.selection import min_neighbor_distance, repr_filter


def unit(rows):
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def official_loop(vectors, scores, k, tau):
    """The official algorithm, one candidate at a time against the selected set (deita batch_size=1)."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    chosen = []
    for i in order:
        if chosen and (vectors[chosen] @ vectors[i]).max() > tau:
            continue
        chosen.append(i)
        if len(chosen) == k:
            break
    return np.asarray(chosen)


@pytest.mark.parametrize("block", [1, 5, 64, 4096])
def test_repr_filter_equals_the_official_loop(block):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 24))
    vectors = unit(centres[rng.integers(0, 40, 600)] + 0.2 * rng.normal(size=(600, 24)))
    scores = rng.integers(0, 20, 600)  # many ties
    assert np.array_equal(repr_filter(vectors, scores, k=80, tau=0.9, block=block), official_loop(vectors, scores, 80, 0.9))


def test_cosine_exactly_tau_is_kept_and_duplicates_are_rejected():
    tau = 0.75
    vectors = unit([[1.0, 0.0], [tau, np.sqrt(1 - tau**2)], [1.0, 0.0]])  # cos(0,1) = 0.75 exactly; row 2 = row 0
    assert (vectors[0] @ vectors[1]) == np.float32(tau)
    assert repr_filter(vectors, [3.0, 2.0, 1.0], k=3, tau=tau).tolist() == [0, 1]


def test_ties_keep_row_order_nan_scores_last_and_k_caps():
    vectors = np.eye(4, dtype=np.float32)
    assert repr_filter(vectors, [1.0, np.nan, 1.0, 2.0], k=4, tau=0.9).tolist() == [3, 0, 2, 1]
    assert repr_filter(vectors, [1.0, np.nan, 1.0, 2.0], k=2, tau=0.9).tolist() == [3, 0]


def frame(texts, vectors=None, **columns):
    df = pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "source": ["t"] * len(texts),
                       "messages": [[{"role": "user", "content": t}] for t in texts], "meta": ["{}"] * len(texts), **columns})
    return df.with_columns(as_column(vectors)) if vectors is not None else df


def test_diverse_top_k_orders_kept_rows_by_selection_and_marks_the_rest():
    vectors = unit([[1, 0], [1, 0.01], [0, 1], [1, 1]])
    df = frame(["a", "b", "c", "d"], vectors, deita_score=[1.0, 5.0, 3.0, 2.0])
    out = selection.diverse_top_k(df, k=3, tau=0.9)
    assert out["id"].to_list() == ["r1", "r2", "r3", "r0"]
    assert out["drop_reason"].to_list() == [None, None, None, "not_selected"]


def test_exact_and_minhash_dedup_keep_the_first_copy():
    texts = ["How do I bake sourdough bread at home with a starter?", "how do I  bake sourdough bread at home with a starter?",
             "How do I bake sourdough bread at home with a new starter?", "Explain the theory of relativity in simple words."]
    exact = selection.dedup(frame(texts), method="exact")
    assert exact["drop_reason"].to_list() == [None, "dup_exact", None, None] and exact["dup_of"].to_list()[1] == "r0"
    fuzzy = selection.dedup(frame(texts), method="minhash", threshold=0.5, ngram=2)
    assert fuzzy["drop_reason"].to_list() == [None, "dup_minhash", "dup_minhash", None]
    with pytest.raises(ValueError, match="valid: \\['exact', 'minhash', 'semantic'\\]"):
        selection.dedup(frame(texts), method="fuzzy")


def test_semantic_dedup_and_min_neighbor_distance():
    vectors = unit([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [1, 0, 0]])
    out = selection.dedup(frame(["a", "b", "c", "d"], vectors), method="semantic", threshold=0.95)
    assert out["drop_reason"].to_list() == [None, "dup_semantic", None, "dup_semantic"]
    distance, repeats, first = min_neighbor_distance(vectors)
    assert distance[3] == 0.0 and distance[2] == pytest.approx(2 - 2 * float(vectors[2] @ vectors[1]), abs=1e-5)  # d^2 = 2 - 2 cos
    assert repeats.tolist() == [2, 2, 0, 2] and first.tolist() == [-1, 0, -1, 0]
    assert semantic_duplicates(vectors, 0.95).tolist() == [-1, 0, -1, 0]


def keep_first_reference(vectors, threshold):
    """All pairs, rows in order: a row duplicates the first earlier kept row with cosine >= threshold."""
    similar, dup_of = vectors @ vectors.T >= threshold, np.full(len(vectors), -1)
    for i in range(len(vectors)):
        kept = [j for j in np.flatnonzero(similar[i, :i]) if dup_of[j] < 0]
        dup_of[i] = kept[0] if kept else -1
    return dup_of


def clustered(n, seed=0, dim=32):
    """Unit vectors in tight groups (cosine ~0.97 within a group), so duplicates chain across blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 6, dim))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.04 * rng.normal(size=(n, dim)))


@pytest.mark.parametrize("block", [7, 64, 4096])
def test_semantic_duplicates_streams_blocks_against_the_kept_rows_exactly(block):
    vectors = clustered(600)
    expected = keep_first_reference(vectors, 0.97)
    assert (expected >= 0).sum() > 100 and (expected < 0).sum() > 50  # duplicates and survivors both plentiful
    assert semantic_duplicates(vectors, 0.97, block=block).tolist() == expected.tolist()


def test_approximate_semantic_duplicates_never_invent_a_pair_and_find_most():
    vectors = clustered(3000, seed=1)
    expected = keep_first_reference(vectors, 0.97)
    found = semantic_duplicates(vectors, 0.97, block=256, approximate=True)
    hits = np.flatnonzero(found >= 0)
    assert (np.einsum("ij,ij->i", vectors[hits], vectors[found[hits]]) >= 0.97).all()  # verified: real pairs only
    assert (found[hits] < hits).all() and (found[found[hits]] < 0).all()  # an earlier row, itself kept
    assert np.mean(found[expected >= 0] >= 0) >= 0.95  # recall of the IVF-SQ8 search


@pytest.mark.parametrize("knn_candidates", [256, 2])
def test_knn_candidates_what_gpu_faiss_runs_match_the_range_search(knn_candidates):
    """GPU faiss has no range search: there the approximate dedup takes each row's nearest kept rows by kNN. Run on
    the CPU index here, it must find what the range search finds; with 2 candidates most matching rows saturate
    and are compared with every kept row exactly, so it finds at least as much."""
    vectors = clustered(3000, seed=1)
    by_range = semantic_duplicates(vectors, 0.97, block=256, approximate=True, candidates="range")
    by_knn = semantic_duplicates(vectors, 0.97, block=256, approximate=True, candidates="knn",
                                 knn_candidates=knn_candidates)
    hits = np.flatnonzero(by_knn >= 0)
    assert (np.einsum("ij,ij->i", vectors[hits], vectors[by_knn[hits]]) >= 0.97).all()  # verified pairs only
    assert (by_knn[by_knn[hits]] < 0).all()  # each names a kept row
    if knn_candidates == 256:
        assert by_knn.tolist() == by_range.tolist()
    else:
        expected = keep_first_reference(vectors, 0.97)
        assert np.mean(by_knn[expected >= 0] >= 0) >= np.mean(by_range[expected >= 0] >= 0) >= 0.95


def test_top_k_and_select_table():
    df = frame(["a", "b", "c"], unit([[1, 0], [0, 1], [1, 1]]), ifd=[0.2, None, 0.9])
    assert selection.top_k(df, k=1, column="ifd")["drop_reason"].to_list() == [None, "not_selected", "not_selected"]
    table = pl.DataFrame({"id": ["x", "y", "z"], "complexity": [[2.0], [3.0], [1.0]], "quality": [[2.0], [1.0], [5.0]]}).with_columns(
        as_column(unit([[1, 0], [0, 1], [1, 0.001]])))
    picked = selection.select_table(table, k=3, tau=0.9)["id"].to_list()
    assert picked == ["z", "y"]  # z (5.0) first; x (4.0) is a near-copy of z; y (3.0)
    with pytest.raises(ValueError, match="missing column\\(s\\) \\['embedding'\\]"):
        selection.select_table(table.drop("embedding"), k=1)


def test_pairs_inside_the_bf16_margin_are_decided_in_fp32():
    # Every candidate's cosine to the first row lies within +-0.005 of tau, where bf16 alone cannot tell.
    rng = np.random.default_rng(7)
    tau, base = 0.9, np.zeros(64)
    base[0] = 1.0
    rows = [base]
    for c in rng.uniform(tau - 0.005, tau + 0.005, 300):
        other = rng.normal(size=64)
        other[0] = 0.0
        other /= np.linalg.norm(other)
        rows.append(c * base + np.sqrt(1 - c * c) * other)
    vectors = unit(rows)
    scores = np.r_[10.0, rng.random(300)]
    assert np.array_equal(repr_filter(vectors, scores, k=301, tau=tau, block=32), official_loop(vectors, scores, 301, tau))


@pytest.mark.parametrize("selector", ["diverse", "isa"])
def test_rows_without_a_score_are_never_selected_and_are_counted(selector):
    from pipeline.select import isa

    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(12, 16)))
    scores = [float(i) for i in range(12)]
    scores[11], scores[10] = None, float("nan")  # the best rows by position, but unscored
    df = frame([f"t{i}" for i in range(12)], vectors, deita_score=scores)
    out = (selection.diverse_top_k(df, k=12, tau=0.99) if selector == "diverse" else isa.isa(df, budget=12))
    reasons = dict(zip(out["id"].to_list(), out["drop_reason"].to_list()))
    assert reasons[df["id"][11]] == reasons[df["id"][10]] == "null_score"
    assert sum(r is None for r in reasons.values()) == 10  # every scored row, none of the others


def test_isa_honours_the_budget_and_imputes_nothing():
    from pipeline.select import isa

    rng = np.random.default_rng(1)
    df = frame([f"t{i}" for i in range(30)], unit(rng.normal(size=(30, 16))),
               deita_score=[None if i % 3 == 0 else float(i % 7) for i in range(30)])
    out = isa.isa(df, budget=5)
    assert out["drop_reason"].is_null().sum() == 5
    assert out.filter(pl.col("drop_reason").is_null())["deita_score"].null_count() == 0


@pytest.mark.parametrize("vector, what", [([3.0, 4.0], "norm 5"), ([float("nan"), 0.0], "norm nan")])
def test_non_unit_or_nan_embeddings_are_a_clear_error(vector, what):
    df = frame(["a", "b"], np.array([[1.0, 0.0], vector], dtype=np.float32), deita_score=[1.0, 2.0])
    with pytest.raises(ValueError, match=f"row 1 .* {what} .*normalise them"):
        selection.diverse_top_k(df, k=2)
    with pytest.raises(ValueError, match=f"row 1 .* {what}"):
        selection.select_table(df, k=2)
