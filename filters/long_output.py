"""Long-output curation (Minimum Tuning to Unlock Long Output, arXiv 2410.10210): keep a sample only if its prompt
states exactly one output length and its response meets it.

- The requirement, from the first user turn: `N words` (English), `N字` or a Chinese numeral with 百/千/万 and 字
  (e.g. 三千字 = 3000); none, or more than one, and the sample is dropped (`single_length_requirement`).
- The length of the response: English words plus Chinese characters (LongWriter's count).
- The length score (LongWriter's eval_length.py), with x required and y written:
  S_l = 100 * max(0, 1 - (y/x - 1) / 3) if y > x, else 100 * max(0, 1 - (x/y - 1) / 2);
  the paper keeps S_l >= 80 (`length_score_at_least`).
"""
from __future__ import annotations

import re

import polars as pl

from filters import register
from filters.conversation import first_instruction

CHINESE_NUMERALS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}
CHINESE_UNITS = {"百": 100, "千": 1000, "万": 10000}
ENGLISH = re.compile(r"(\d[\d,]*)\s+words", re.IGNORECASE)
DIGITS_ZI = re.compile(r"(\d+)\s*字")
NUMERAL_ZI = re.compile(r"([一二两三四五六七八九十])([百千万])字")


def length_requirements(prompt: str) -> list[int]:
    """Every output length the prompt asks for.

    >>> length_requirements("Write a 1,500 words essay"), length_requirements("写一篇800字的文章"), length_requirements("写三千字")
    ([1500], [800], [3000])
    >>> length_requirements("Write 200 words, then 300 words"), length_requirements("Write an essay")
    ([200, 300], [])
    """
    found = [int(m.group(1).replace(",", "")) for m in ENGLISH.finditer(prompt)]
    found += [int(m.group(1)) for m in DIGITS_ZI.finditer(prompt)]
    found += [CHINESE_NUMERALS[m.group(1)] * CHINESE_UNITS[m.group(2)] for m in NUMERAL_ZI.finditer(prompt)]
    return found


def output_length(text: str) -> int:
    """English words plus Chinese characters.

    >>> output_length("Hello world, 你好世界")
    6
    """
    return len(re.findall(r"[\u4e00-\u9fff]", text)) + len(re.findall(r"\b[a-zA-Z]+\b", text))


def length_score(required: int, written: int) -> float:
    """LongWriter's S_l in [0, 100].

    >>> [round(length_score(100, y), 1) for y in (100, 200, 50, 400)]
    [100.0, 66.7, 50.0, 0.0]
    """
    if written <= 0 or required <= 0:
        return 0.0
    if written > required:
        return 100 * max(0.0, 1 - (written / required - 1) / 3)
    return 100 * max(0.0, 1 - (required / written - 1) / 2)


def _required(prompt: str | None) -> int | None:
    found = length_requirements(prompt or "")
    return found[0] if len(found) == 1 else None


def _response(messages) -> str:
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return answers[0] if answers else ""


@register
def single_length_requirement() -> pl.Expr:
    """The first user turn states exactly one output length."""
    return first_instruction().map_elements(_required, return_dtype=pl.Int64).is_not_null()


@register
def length_score_at_least(min_score: float = 80.0) -> pl.Expr:
    """The first response meets the prompt's single length requirement with S_l >= min_score (rows without exactly
    one requirement fail)."""
    required = first_instruction().map_elements(_required, return_dtype=pl.Int64)
    written = pl.col("messages").map_elements(lambda m: output_length(_response(m)), return_dtype=pl.Int64)
    score = pl.struct(required.alias("x"), written.alias("y")).map_elements(
        lambda r: None if r["x"] is None else length_score(r["x"], r["y"]), return_dtype=pl.Float64)
    return score >= min_score


LONG_OUTPUT = ["single_length_requirement", {"name": "length_score_at_least", "min_score": 80.0}]
