"""Trace-quality filters read the reasoning; the text filters and scorers read the content only."""
import polars as pl

import filters
from filters.reasoning import REASONING
from pipeline.core.records import conform, first_pairs


def frame(rows):
    return pl.from_arrow(conform(pl.DataFrame([
        {"id": str(i), "source": "t", "meta": "{}",
         "messages": [{"role": "user", "content": "What is two plus two, please?"},
                      {"role": "assistant", "content": content, "reasoning": reasoning}]}
        for i, (reasoning, content) in enumerate(rows)], infer_schema_length=None)))


def test_trace_filters_drop_open_blocks_loops_and_mixed_scripts():
    df = frame([("Two and two make four, so the answer is four.", "4"),
                (None, "<think>I never close this block"),
                ("wait " * 60, "4"),
                ("首先我们计算二加二等于四。然后 we check the answer again carefully here", "4"),
                ("Zwei plus zwei ist vier.", "Vier.")])
    assert filters.mark(df, REASONING)["drop_reason"].to_list() == [
        None, "think_closed", "reasoning_repetition_at_most", "single_script", None]


def test_text_filters_and_scorers_read_content_not_reasoning():
    df = frame([("loop " * 200, "Four.")])  # a looping trace behind a clean answer
    assert filters.mark(df, filters.QUALITY)["drop_reason"].to_list() == [None]
    assert first_pairs(df) == [("What is two plus two, please?", "Four.")]  # what deita and the judges score
