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


def test_quality_filters_drop_the_planted_junk_and_keep_normal_rows():
    """A hand-planted set: 30 ordinary instruction/response pairs and 10 junk rows ("ok", "lol", "asdf" as
    instruction and answer). Goal: >= 90 % of the junk dropped, >= 95 % of the normal rows kept."""
    from pathlib import Path

    from pipeline.core.inputs import load

    df = load(Path(__file__).parent / "data" / "planted.jsonl")
    kept, drops = filters.apply(df, filters.QUALITY)
    kept_ids = set(kept["id"].to_list())
    junk = [i for i in df["id"].to_list() if i.startswith("junk")]
    normal = [i for i in df["id"].to_list() if i.startswith("normal")]
    assert sum(i not in kept_ids for i in junk) >= 0.9 * len(junk), drops
    assert sum(i in kept_ids for i in normal) >= 0.95 * len(normal), sorted(set(normal) - kept_ids)


def test_repetition_filters_drop_a_looping_answer():
    loop = "L'Étoile, la Cité, la Femme, " + "la Femme, " * 40
    df = pl.DataFrame({"messages": [[{"role": "user", "content": "What is the capital of France?"},
                                     {"role": "assistant", "content": loop}],
                                    [{"role": "user", "content": "What is the capital of France?"},
                                     {"role": "assistant", "content": "Paris is the capital of France."}]]})
    for name in ("word_repetition_at_most", "char_repetition_at_most"):
        kept, drops = filters.apply(df, [name])
        assert kept.height == 1 and drops == {name: 1}
