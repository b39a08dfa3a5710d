"""Golden tests: final-answer extraction, math-verify's equivalences, and the sandbox's limits (each a verdict)."""
import pytest

from pipeline.core.sandbox import Limits, isolation, run_python
from pipeline.synth.answers import extract_answer, is_correct, math_equal

EXTRACTION = [
    (r"<so> \boxed{\frac{1}{2}} and later \boxed{\dfrac{3}{4}}", "math", r"\dfrac{3}{4}"),
    (r"The answer is \boxed{x^{2}+1}.", "math", "x^{2}+1"),
    ("Therefore, the final answer is $42$.", "math", "42"),
    ("Answer: 7 apples", "short", "7 apples"),
    ("no conclusion at all", "math", None),
    (r"\boxed{unbalanced", "math", None),
    (r"So \boxed{\text{(C)}}", "choice", "C"),
    ("The correct option is (b).", "choice", "B"),
    ("I think\nD\n", "choice", "D"),
    ("I am not sure.", "choice", None),
    ("first\n```python\nx = 1\n```\nthen\n```python\ndef f():\n    return 2\n```", "code", "def f():\n    return 2\n"),
    ("no code here", "code", None),
]


@pytest.mark.parametrize("text, kind, expected", EXTRACTION)
def test_extract_answer(text, kind, expected):
    assert extract_answer(text, kind) == expected


EQUAL = [("0.5", r"\frac{1}{2}"), (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"), ("x = 3", "3"), (r"\{1, 2\}", r"\{2, 1\}"),
         (r"50\%", "0.5"), ("2\\pi", "6.283185307"), ("(1, 2]", "(1,2]"), (r"\dfrac{3}{4}", "0.75")]
UNEQUAL = [("3", "4"), ("(1, 2]", "(1, 2)"), (r"\sqrt{2}", "1.41"), ("x + 1", "x - 1")]


@pytest.mark.parametrize("answer, gold", EQUAL)
def test_math_verify_equivalences(answer, gold):
    assert math_equal(answer, gold)


@pytest.mark.parametrize("answer, gold", UNEQUAL)
def test_math_verify_differences(answer, gold):
    assert not math_equal(answer, gold)


def test_choices_and_short_answers_match_normalised():
    assert is_correct("B", ["(b)"], "choice") and not is_correct("A", ["B"], "choice")
    assert is_correct("The Eiffel Tower!", ["eiffel tower"], "short") and not is_correct("Louvre", ["Eiffel Tower"], "short")
    assert not is_correct(None, ["1"], "math")


def test_the_sandbox_counts_loops_allocations_and_sockets():
    limits = Limits(seconds=2, memory_mb=256)
    assert run_python("print(input()[::-1])", stdin="abc", limits=limits).stdout == "cba\n"
    assert run_python("while True:\n    pass", limits=limits).status == "timeout"
    assert run_python("x = bytearray(1024 ** 3)", limits=limits).status == "memory"
    # a socket is refused and counted even when the code swallows the error
    opened = run_python("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
                        "except Exception:\n    pass\nprint('done')", limits=limits)
    assert (opened.status, opened.stdout) == ("network", "done\n")
    assert run_python("assert 1 == 2", limits=limits).error.startswith("AssertionError")
    assert isolation() in ("netns", "userns+netns", "audit-hook")
