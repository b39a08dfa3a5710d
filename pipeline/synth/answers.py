"""Final answers out of reasoning traces, and whether they are right: math by Hugging Face's `math-verify` (LaTeX and
plain expressions parsed to SymPy and compared symbolically: 1/2 = 0.5 = 50%, sets in any order, x = 3 against 3),
multiple choice by the option letter, short answers by TriviaQA's normalised match, code by the problem's tests in
the sandbox (pipeline.synth.distill). math-verify is the library the Open-R1 and OpenThoughts pipelines verify with,
so its equivalences are the field's; our code only finds the answer to give it.
"""
from __future__ import annotations

import re
import threading

KINDS = ("math", "choice", "short", "code")
LETTERS = "ABCDEFGHIJ"

_ANSWER_LINE = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*[:\s]*(.+)", re.IGNORECASE)
_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def last_boxed(text: str | None) -> str | None:
    r"""The content of the last \boxed{...} (or \fbox{...}), braces balanced; None when there is none.

    >>> last_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> last_boxed(r"\boxed{unclosed") is None
    True
    """
    if not text:
        return None
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
        i += 1
    return None


def _answer_line(text: str) -> str | None:
    found = _ANSWER_LINE.findall(text)
    if not found:
        return None
    answer = found[-1].strip().splitlines()[0].strip()
    answer = re.sub(r"^\$+|\$+$", "", answer.rstrip(".").strip()).strip()
    return answer or None


def extract_answer(text: str | None, kind: str) -> str | None:
    """A reply's final answer as text (None when it gives none): math and short answers from the last \\boxed{}, else
    the last "answer is ..." / "Answer: ..." line; a choice as its option letter; code as the last Python code block.

    >>> extract_answer("Thus the answer is $x = 3$.", "math")
    'x = 3'
    >>> extract_answer("I pick (c).", "choice"), extract_answer(r"\\boxed{B}", "choice")
    ('C', 'B')
    >>> extract_answer("```python\\nprint(1)\\n```", "code")
    'print(1)\\n'
    """
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; valid: {list(KINDS)}")
    if not text:
        return None
    if kind == "code":
        blocks = _FENCE.findall(text)
        return blocks[-1] if blocks else None
    answer = last_boxed(text) or _answer_line(text)
    if kind != "choice":
        return answer
    for candidate in (answer, text):
        if not candidate:
            continue
        text_of = re.sub(r"\\text\{([^}]*)\}", r"\1", candidate)
        letters = re.findall(rf"(?:^|[\s(\[*]|option\s)([{LETTERS}{LETTERS.lower()}])(?=$|[\s).\]:*,])", text_of)
        if candidate is answer and letters:
            return letters[0].upper()
        if candidate is text:  # no marked answer: the last "(c)", or a line that is only a letter ("I" is a word)
            lone = re.findall(rf"\(([{LETTERS}{LETTERS.lower()}])\)|^\s*([{LETTERS}])[.)]?\s*$", text_of, re.MULTILINE)
            return "".join(lone[-1]).upper() if lone else None
    return None


def _timeout(seconds: int) -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set (replicas run stages elsewhere)
    return seconds if threading.current_thread() is threading.main_thread() else None


def math_equal(answer: str, gold: str) -> bool:
    """Whether two math answers are the same value, by math-verify (answers in $...$ are parsed as LaTeX first,
    then as plain expressions); when either does not parse, their whitespace-free texts must be equal.

    >>> math_equal("0.5", "\\\\frac{1}{2}"), math_equal("3", "4")
    (True, False)
    """
    from math_verify import parse, verify

    wrap = lambda s: s if "$" in s else f"${s}$"  # noqa: E731
    parsed_gold = parse(wrap(gold), parsing_timeout=_timeout(5)) or parse(gold, parsing_timeout=_timeout(5))
    parsed = parse(wrap(answer), parsing_timeout=_timeout(5)) or parse(answer, parsing_timeout=_timeout(5))
    if not parsed_gold or not parsed:
        return "".join(answer.split()) == "".join(gold.split())
    return bool(verify(parsed_gold, parsed, timeout_seconds=_timeout(5)))


def is_correct(answer: str | None, golds: list[str], kind: str) -> bool:
    """Whether an extracted answer matches one of the gold answers for its kind (not code: the sandbox judges that)."""
    from pipeline.synth.honesty import normalize

    if answer is None:
        return False
    if kind == "math":
        return any(math_equal(answer, g) for g in golds)
    if kind == "choice":
        return any(answer.strip().upper() == g.strip().strip("()").upper() for g in golds)
    if kind == "short":
        return any(normalize(answer) == normalize(g) for g in golds if normalize(g))
    raise ValueError(f"kind {kind!r} is verified by running tests, not by matching an answer")
