"""`distill`: a scripted engine plants right, wrong, unanswered, truncated, unclosed and sandbox-failing samples and
the counts come out exact; rejection sampling keeps the shortest verified trace; s1 selection picks by difficulty and
diversity; the card and report show pass rates; the real SmolLM2 runs the command end to end."""
import json

import polars as pl
import pytest

from pipeline.engines import EngineSpec
from pipeline.recipes.reasoning import distill_job
from pipeline.select.difficulty import select_problems

PROBLEMS = [
    {"id": "half", "problem": "What is 1/2 written as a decimal?", "answer": "0.5"},
    {"id": "paris", "problem": "Which city is the capital of France?", "answer": "Paris", "kind": "short"},
    {"id": "pick", "problem": "Which letter comes second?", "answer": "B", "choices": ["A", "B"]},
    {"id": "add", "problem": "Write add(a, b) that returns the sum.", "tests": "assert add(1, 2) == 3"},
    {"id": "echo", "problem": "Echo the input line twice.", "tests": [{"input": "hi\n", "output": "hihi"}]},
    {"id": "nogold", "problem": "Something without an answer."},
]
REPLIES = {
    "1/2 written": ["<think>One half is five tenths.</think>The answer is \\boxed{\\frac{1}{2}}.",  # right (as a fraction)
                    "<think>Hmm.</think>\\boxed{0.2}",                                           # wrong
                    "<think>I do not know.</think>No idea.",                                    # no answer
                    "<think>" + "very long thought " * 40],                                     # truncated
    "capital of France": ["<think>France's capital.</think>\\boxed{paris}", "<think>Sure</think>\\boxed{Paris.}"],
    "comes second": ["<think>a then b</think>\\boxed{B}", "<think>first</think>The answer is (A)",
                     "<think>open and never closed \\boxed{B}"],
    "add(a, b)": ["<think>sum</think>```python\ndef add(a, b):\n    return a + b\n```",
                  "```python\ndef add(a, b):\n    return a - b\n```",
                  "```python\ndef add(a, b):\n    while True:\n        pass\n```",
                  "```python\nx = bytearray(1024 ** 3)\ndef add(a, b):\n    return a + b\n```"],
    "Echo the input": ["```python\nline = input()\nprint(line * 2)\n```",
                       "```python\nimport socket\nsocket.create_connection(('127.0.0.1', 9))\nprint(input() * 2)\n```"],
}


def write(tmp_path, rows):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_planted_samples_are_verified_with_exact_counts_and_the_shortest_is_kept(tmp_path):
    engine = EngineSpec.make("fake", "teacher", options={"script": REPLIES})
    summary = distill_job(tmp_path / "run", input_path=write(tmp_path, PROBLEMS), engine=engine, n=4, max_tokens=40,
                          seconds=3, memory_mb=256)
    sampled = summary["stages"]["sampled"]
    assert sampled["rows_in"] == 6 and sampled["rows_out"] == 10  # 1 + 4 + 2 + 1 + 2 verified samples
    assert sampled["drops"] == {"wrong_answer": 3, "no_answer": 1, "truncated": 1, "unclosed_think": 1, "timeout": 1,
                                "memory": 1, "network": 2, "no_gold_answer": 1}
    assert summary["stages"]["verified"]["drops"] == {"not_shortest": 5}
    rows = pl.read_parquet(summary["export"])
    assert sorted(rows["parent_id"].to_list()) == ["add", "echo", "half", "paris", "pick"]
    rates = dict(zip(rows["parent_id"], rows["pass_rate"]))
    assert rates == {"half": 0.25, "paris": 1.0, "pick": 0.5, "add": 0.25, "echo": 0.5}
    half = next(r for r in rows.iter_rows(named=True) if r["parent_id"] == "half")
    assert half["messages"][-1]["reasoning"] == "One half is five tenths."
    assert half["messages"][-1]["content"] == "The answer is \\boxed{\\frac{1}{2}}."
    assert json.loads(half["meta"])["distill"]["answer"] == "\\frac{1}{2}"

    from pipeline.ship import card, report

    ctx = card.context(tmp_path / "run")
    text = "\n".join(ctx["notes"])
    assert "math-verify" in text and "pass rate" in text and "6 problems" in text
    page = report.write(tmp_path / "run").read_text()
    assert "Pass rates" in page and "<svg" in page.split("Pass rates")[1]


def test_s1_selection_takes_hard_and_diverse_problems_first():
    def unit(*v):
        return [x / sum(y * y for y in v) ** 0.5 for x in v]

    rows = pl.DataFrame({
        "id": ["a", "b", "c", "d"], "parent_id": ["pa", "pb", "pc", "pd"], "pass_rate": [0.25, 0.25, 1.0, 0.75],
        "messages": [[{"role": "assistant", "content": "x", "reasoning": "r" * n}] for n in (10, 50, 10, 10)],
        "embedding": [unit(1, 0), unit(1, 0.01), unit(0, 1), unit(0.1, 1)]},
        schema_overrides={"embedding": pl.List(pl.Float32)})
    out = select_problems(rows, k=2, tau=0.9, max_pass_rate=0.9)
    # pb before pa (same pass rate, longer trace); pa is a near copy of pb; pc is too easy; pd fills the budget
    assert out["id"].to_list()[:2] == ["b", "d"]
    assert dict(zip(out["id"], out["drop_reason"])) == {"b": None, "d": None, "a": "not_selected", "c": "too_easy"}


@pytest.mark.real_llm
def test_the_distill_command_on_smollm2(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    problems = write(tmp_path, [{"id": "one", "problem": "What is 2 + 3?", "answer": "5"}])
    result = CliRunner().invoke(app, ["distill", "--input", str(problems), "--out", str(tmp_path / "run"), "--engine",
                                      "llamacpp", "--n", "2", "--max-tokens", "64"])
    assert result.exception is None and result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()]
    sampled = [e for e in manifest if e["stage"] == "sampled" and e.get("status") == "done"]
    assert sum(e["rows_in"] for e in sampled) == 1
    assert sum(e["rows_out"] for e in sampled) + sum(sum(e["drops"].values()) for e in sampled) == 2  # 2 samples
    assert set().union(*(e["drops"] for e in sampled)) <= {"wrong_answer", "no_answer", "truncated", "unclosed_think"}
    rows = pl.read_parquet(tmp_path / "run" / "export" / "data.parquet")
    assert rows.height <= 1  # the shortest verified trace, if any
    for row in rows.iter_rows(named=True):  # whatever SmolLM2 got right was verified right
        meta = json.loads(row["meta"])["distill"]
        assert meta["verified"] and row["pass_rate"] > 0


def test_an_apis_reasoning_content_is_kept_apart_from_the_text():
    from pipeline.engines import Sampling
    from pipeline.engines.openai_chat import OpenAIChatEngine

    response = {"choices": [{"message": {"content": "\\boxed{4}", "reasoning_content": "Two and two."},
                             "finish_reason": "stop"}], "usage": {"completion_tokens": 5}}
    completion = OpenAIChatEngine.completion(None, response, Sampling())
    assert (completion.text, completion.reasoning) == ("\\boxed{4}", "Two and two.")
