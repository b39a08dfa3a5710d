"""`tools`: APIGen's format, execution and semantic checks on planted generations (exact drops by check), schema
validation of calls, the sandbox running the user's functions, final answers, and the real SmolLM2 end to end."""
import json

import polars as pl
import pytest

from pipeline.core.messages import tools_by_name, tools_column
from pipeline.core.rundir import write_shard
from pipeline.engines import EngineSpec
from pipeline.recipes.reasoning import tools_steps
from pipeline.recipes.steps import run_job
from pipeline.synth.tools import call_errors, plan

TOOLS = [
    {"name": "add", "description": "Add two integers.",
     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}},
    {"name": "divide", "description": "Divide a by b.",
     "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}},
    {"name": "spin", "description": "Spin forever.", "parameters": {"type": "object", "properties": {}}},
    {"name": "fetch", "description": "Fetch a URL.",
     "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}},
]
FUNCTIONS = '''import socket

def add(a, b):
    return a + b

def divide(a, b):
    return a / b

def spin():
    while True:
        pass

def fetch(url):
    socket.create_connection(("127.0.0.1", 80), timeout=1)
'''


def call(name: str, arguments: dict) -> dict:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def test_calls_are_validated_against_their_schema():
    tools = tools_by_name(tools_column(TOOLS))
    assert call_errors(call("add", {"a": 1, "b": 2}), tools) is None
    assert call_errors(call("add", {"a": 1}), tools) == ("format:invalid_arguments", "add: 'b' is a required property")
    assert call_errors(call("add", {"a": "1", "b": 2}), tools)[0] == "format:invalid_arguments"
    assert call_errors(call("mul", {}), tools)[0] == "format:unknown_tool"
    assert call_errors({"function": {"name": "add", "arguments": "{not json"}}, tools)[0] == "format:invalid_arguments"


def test_the_plan_draws_tools_modes_and_examples_per_row():
    examples = [{"query": "1+2?", "calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}]
    rows = plan(tools_column(TOOLS), n=20, seed=3, examples=examples, max_tools=2, parallel_share=0.5)
    assert rows.height == 20 and set(rows["tools"].list.len().to_list()) <= {1, 2}
    modes = [json.loads(m)["tools"]["mode"] for m in rows["meta"]]
    assert {"single", "parallel"} == set(modes)
    assert rows["tools"].to_list() == plan(tools_column(TOOLS), n=20, seed=3, examples=examples, max_tools=2)["tools"].to_list()


def planted(query_calls: list) -> str:
    return json.dumps({"query": query_calls[0], "calls": [{"name": n, "arguments": a} for n, a in query_calls[1:]]})


def test_planted_generations_are_dropped_by_check_with_exact_counts(tmp_path):
    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    (tmp_path / "mytools.py").write_text(FUNCTIONS)
    generations = [
        planted(["What is 2 + 3?", ("add", {"a": 2, "b": 3})]),                        # kept
        planted(["Add 1 and 2, and 3 and 4.", ("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),  # kept, parallel
        "Sorry, I cannot help with that.",                                               # format:unparseable
        planted(["Multiply 2 by 3.", ("multiply", {"a": 2, "b": 3})]),                   # format:unknown_tool
        planted(["Add two and three.", ("add", {"a": "two", "b": 3})]),                  # format:invalid_arguments
        planted(["Divide 1 by 0.", ("divide", {"a": 1, "b": 0})]),                       # execution:error
        planted(["Spin.", ("spin", {})]),                                                # execution:timeout
        planted(["Fetch example.com.", ("fetch", {"url": "http://example.com"})]),       # execution:network
        planted(["What is 5 + 5?", ("add", {"a": 5, "b": 5})]),                          # semantic:rejected
    ]
    script = {"Check a function-calling example": '{"thought": "ok", "passes": true}', "The functions returned": "Done."}
    script = {"What is 5 + 5?\nThe assistant called": '{"thought": "wrong", "passes": false}', **script}
    # each row's generation is keyed by its seed example, which only its own prompt shows
    examples = [{"query": f"row {i}", "calls": []} for i in range(len(generations))]
    keyed = {f'"query": "row {i}"': g for i, g in enumerate(generations)}
    spec = EngineSpec.make("fake", "generator", options={"script": {**script, **keyed}})

    def source(out):
        frame = plan(tools_column(TOOLS), n=len(generations), seed=0, max_tools=4)
        frame = frame.with_columns(pl.Series("tools", [tools_column(TOOLS)] * len(generations), dtype=frame.schema["tools"]),
                                   pl.Series("meta", [json.dumps({"tools": {"mode": "single", "examples": [e]}}) for e in examples]))
        write_shard(frame, out / "plan" / "shard-00000.parquet")
        return out / "plan"

    steps = tools_steps(functions="mytools", python_path=str(tmp_path), seconds=2, memory_mb=256)
    summary = run_job(tmp_path / "run", steps, source, engine=spec, card="t", max_failure_rate=0.1, on_progress=None)
    stages_ = summary["stages"]
    assert stages_["generated"]["drops"] == {"format:unparseable": 1}
    assert stages_["format-checked"]["drops"] == {"format:unknown_tool": 1, "format:invalid_arguments": 1}
    assert stages_["executed"]["drops"] == {"execution:error": 1, "execution:timeout": 1, "execution:network": 1}
    assert stages_["judged"]["drops"] == {"semantic:rejected": 1}
    kept = pl.read_parquet(summary["export"])
    assert kept.height == 2
    parallel = next(m for m in kept["messages"].to_list() if len(m) == 5)
    assert [m["role"] for m in parallel] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [m["content"] for m in parallel[2:4]] == ["3", "7"] and parallel[4]["content"] == "Done."
    assert parallel[2]["tool_call_id"] == parallel[1]["tool_calls"][0]["id"]

    from pipeline.ship import card

    notes = "\n".join(card.context(tmp_path / "run")["notes"])
    assert "format-checked: APIGen format" in notes and "6 of 8 rows passed" in notes
    assert "executed: APIGen execution" in notes and "3 of 6 rows passed (50%)" in notes


@pytest.mark.real_llm
def test_the_tools_command_on_smollm2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    (tmp_path / "tools.json").write_text(json.dumps(TOOLS[:2]))
    (tmp_path / "mytools.py").write_text(FUNCTIONS)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["tools", "--tools", "tools.json", "--functions", "mytools", "--out", "run",
                                      "--engine", "llamacpp", "--n", "2", "--max-tokens", "96"])
    assert result.exception is None and result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()]
    generated = next(e for e in manifest if e["stage"] == "generated")
    assert generated["rows_in"] == 2 and set(generated["drops"]) <= {"format:unparseable", "format:no_calls",
                                                                     "format:invalid_arguments"}
    for row in pl.read_parquet(tmp_path / "run" / "export" / "data.parquet").iter_rows(named=True):
        tools = tools_by_name(row["tools"])  # whatever SmolLM2 wrote that was kept validates and ran
        calls = [c for m in row["messages"] if m["role"] == "assistant" for c in m["tool_calls"] or []]
        assert calls and all(call_errors(c, tools) is None for c in calls)
        assert [m["role"] for m in row["messages"]][-1] == "assistant"
