import json

import polars as pl
import pytest

import filters


def row(rid, user, assistant="fine answer", user_finish="stop", assistant_finish="stop"):
    meta = {"magpie": {"turns": [{"user": {"finish_reason": user_finish}, "assistant": {"finish_reason": assistant_finish}}]}}
    return {"id": rid, "source": "magpie", "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            "meta": json.dumps(meta)}


CASES = [
    (row("ok", "How do I learn Rust quickly?"), None),
    (row("cut", "How do I learn Rust quickly?", user_finish="length"), "instruction_complete"),
    (row("short", "Hi?"), "instruction_length"),
    (row("colon", "Please list the following items:"), "no_trailing_colon"),
    (row("rcut", "Explain the water cycle please.", assistant_finish="length"), "response_complete"),
    (row("empty", "Explain the water cycle in detail.", assistant=""), "response_length"),
    (row("dup", "how do I  learn rust quickly?"), "unique_instruction"),
]


def test_each_filter_drops_its_row_and_counts_it():
    df = pl.DataFrame([c[0] for c in CASES])
    marked = filters.mark(df, filters.MAGPIE_BASIC)
    assert marked["drop_reason"].to_list() == [c[1] for c in CASES]
    kept, counts = filters.apply(df, filters.MAGPIE_BASIC)
    assert kept["id"].to_list() == ["ok"]
    assert counts == {c[1]: 1 for c in CASES if c[1]}


def test_dedup_keeps_the_first_row_still_kept():
    df = pl.DataFrame([row("a", "Same question here?", user_finish="length"), row("b", "Same question here?")])
    kept, counts = filters.apply(df, ["instruction_complete", "unique_instruction"])
    assert kept["id"].to_list() == ["b"] and counts == {"instruction_complete": 1}


def test_unknown_filter_lists_valid_names():
    with pytest.raises(ValueError, match="unknown filter 'nope'; valid filters: \\[.*'instruction_complete'.*'unique_instruction'"):
        filters.apply(pl.DataFrame([row("a", "x")]), ["nope"])
    with pytest.raises(ValueError, match="bad parameters"):
        filters.apply(pl.DataFrame([row("a", "x")]), [{"name": "instruction_length", "minimum": 3}])


def test_score_filters_on_columns():
    df = pl.DataFrame([row("a", "Question one here?"), row("b", "Question two here?"), row("c", "Question three here?")]).with_columns(
        pl.Series("ifd", [0.4, 1.2, None]), pl.Series("ref_similarity", [0.2, 0.99, None]), pl.Series("ref_ngram_overlap", [0.0, 0.0, 0.9]))
    assert filters.mark(df, [{"name": "ifd_at_most", "limit": 1.0}])["drop_reason"].to_list() == [None, "ifd_at_most", "ifd_at_most"]
    assert filters.mark(df, ["not_contaminated"])["drop_reason"].to_list() == [None, "not_contaminated", "not_contaminated"]
