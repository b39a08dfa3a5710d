"""The distill and tools flows under Prefect's test harness, each step a task, on the fake engine."""
import json

import polars as pl
import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_distill_and_tools_flows(tmp_path):
    from flows.reasoning import distill_flow, tools_flow

    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p", "problem": "What is 6 times 7?", "answer": "42"}) + "\n")
    teacher = {"backend": "fake", "model": "teacher", "options": {"script": {
        "6 times 7": ["<think>6*7</think>\\boxed{42}", "<think>guess</think>\\boxed{41}"]}}}
    export = distill_flow(out=str(tmp_path / "distill"), input_path=str(problems), engine=teacher, options={"n": 2})
    rows = pl.read_parquet(export)
    assert rows["pass_rate"].to_list() == [0.5] and rows["messages"][0].to_list()[-1]["reasoning"] == "6*7"

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "mul", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}]))
    (tmp_path / "calc.py").write_text("def mul(a, b):\n    return a * b\n")
    generator = {"backend": "fake", "model": "generator", "options": {"script": {
        "Check a function-calling example": '{"thought": "right", "passes": true}',
        "The functions returned": "6 times 7 is 42.",
        "The functions it can call": '{"query": "6 times 7?", "calls": [{"name": "mul", "arguments": {"a": 6, "b": 7}}]}'}}}
    export = tools_flow(out=str(tmp_path / "tools"), tools=str(tools), n=2, engine=generator, functions="calc",
                        python_path=str(tmp_path))
    rows = pl.read_parquet(export)
    assert rows.height == 2
    assert [m["content"] for m in rows["messages"][0].to_list()[2:]] == ["42", "6 times 7 is 42."]
