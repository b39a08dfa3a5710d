"""Magpie's instruction sanitizer, behaviour-identical to the official `instruction_post_process`
(magpie-align/magpie exp/str_utils.py) for Llama-3 and Gemma-2; every other family is returned unchanged
with class 0. The class numbers are the official ones and are kept in `meta` for auditing.

Faithful quirks, kept on purpose (tests pin them): class 3 (`<b>`) does not cut at the first line, the
official code computes that value and throws it away; class-1 instructions skip the second prefix strip.
"""
from __future__ import annotations

import re

_PREFIX_WORDS = ("Task", "Prompt", "Original Prompt", "Question", "The Problem", "Problem", "Scenario", "The senario",
                 "Situation", "The situation", "Context", "Challenge", "Query", "Request", "Instructions", "Instruction",
                 "Descriptions", "Description")
_PREFIXES = [p for w in _PREFIX_WORDS for p in (f"{w}:", f"**{w}**", f"## {w}:")]
_PREFIX = re.compile(
    r"^(" + "|".join([re.escape(p) for p in _PREFIXES] + [r"Question \d+:", r"Question \d+\.", r"Part \d+:", r"Q\d+\.", r"Q\d+:"])
    + r")\s*", re.IGNORECASE)
_ENUMERATOR = re.compile(r"^(\d+\.|\w+\))\s*")
_ANSWER = re.compile(r"(?:" + "|".join(["Answer:", "Answers:", "The answer is", "Correct answer", "The correct answer",
                                         "Answer is", "Explanation:", "Here are some", "Solution Approach:", "Solution:"]) + ")s?:")
_STEP = re.compile(r"(?:# Step 1|## Step 1|### Step 1):?")
SANITIZED_FAMILIES = ("llama-3", "gemma-2")


def remove_prefix(text: str) -> str:
    """Strip a leading enumerator and one "Task:"-style label.

    >>> remove_prefix("1. **Question** What is 2+2?")
    'What is 2+2?'
    """
    text = _ENUMERATOR.sub("", text, count=1).strip()
    match = _PREFIX.match(text)
    return text[match.end():].strip() if match else text


def _unbold(text: str) -> str:
    # The official code removes "**" only when it starts at index 1 (e.g. after a quote or a space).
    return text.replace("**", "").strip() if text.find("**") == 1 else text.strip()


def sanitize_instruction(text: str, family: str | None) -> tuple[str, float]:
    """(clean instruction, official class number); class 0 means the family is not sanitized."""
    if family is None or not family.startswith(SANITIZED_FAMILIES):
        return text, 0
    llama = family.startswith("llama-3")
    text = remove_prefix(text)
    answer = _ANSWER.search(text)
    step = _STEP.search(text) if llama else None
    if text.startswith("*") and "?" in text:
        return remove_prefix(text.split("?")[0].replace("*", "").strip() + "?"), 1
    text = remove_prefix(text)
    first_line = text.split("\n")[0].strip()
    if text.startswith('"'):
        if "?" in text:
            text, cls = text.split("?")[0].replace('"', "").strip() + "?", 2.1
        else:
            text, cls = first_line.replace('"', "").strip().replace("*", "").strip(), 2.2
    elif text.startswith("<b>"):
        text, cls = text.replace("*", "").strip(), 3
    elif answer:
        text, cls = _unbold(text[: answer.start()].strip()), 4
    elif step:
        text, cls = _unbold(text[: step.start()].strip()), 5
    elif first_line.endswith(":"):
        base = 6 if llama else 5
        if "#" in text:
            text, cls = _unbold(text.split("#")[0].strip()), base + 0.1
        elif "?" in text:
            text, cls = _unbold(text.split("?")[0].strip() + "?"), base + 0.2
        else:
            text, cls = first_line.replace("*", "").strip(), base + 0.3
    else:
        other = 99 if llama else 6
        if "?" in text:
            text, cls = _unbold(text.split("?")[0].strip() + "?"), other + 0.1
        else:
            text, cls = first_line.replace("*", "").strip(), other + 0.2
    return remove_prefix(text), round(cls, 1)
