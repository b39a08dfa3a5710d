"""Reasoning and tool calls in the record: conform() upcasts role/content-only messages, imports read OpenAI, ShareGPT
(LLaMA-Factory / glaive function_call + observation) and xLAM tool data, and <think> blocks become `reasoning`."""
import json

import polars as pl
import pytest

from pipeline.core.inputs import load, write_input
from pipeline.core.messages import split_reasoning, tool_calls, tools_column
from pipeline.core.records import RecordError, compact, conform
from pipeline.core.rundir import read_shards

ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                                       "required": ["a", "b"]}}}


def test_conform_upcasts_role_and_content_messages_and_refuses_unknown_keys():
    plain = pl.DataFrame({"id": ["a"], "source": ["t"], "messages": [[{"role": "user", "content": "hi"}]], "meta": ["{}"]})
    table = conform(plain)
    assert pl.from_arrow(table)["messages"].to_list() == [[{"role": "user", "content": "hi", "reasoning": None,
                                                            "tool_calls": None, "tool_call_id": None, "name": None}]]
    odd = plain.with_columns(pl.Series("messages", [[{"role": "user", "content": "hi", "from": "human"}]]))
    with pytest.raises(RecordError, match=r"message key\(s\) \['from'\]"):
        conform(odd)


def test_split_reasoning_and_tool_call_shapes():
    assert split_reasoning("<think>a</think>b") == ("a", "b")
    assert split_reasoning("<r>a</r> b", ("<r>", "</r>")) == ("a", "b")
    assert split_reasoning("no block") == (None, "no block")
    openai = tool_calls([{"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}])
    xlam = tool_calls('[{"name": "add", "arguments": {"a": 1, "b": 2}}]', ids=("x",))
    assert openai[0]["function"] == xlam[0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    assert tools_column(json.dumps([ADD["function"]])) == [json.dumps(ADD)]


def test_imports_read_openai_sharegpt_and_xlam_tool_data(tmp_path):
    calls = [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    rows = [
        {"id": "openai", "tools": [ADD], "messages": [
            {"role": "user", "content": "1+2?"}, {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "3"},
            {"role": "assistant", "content": "3", "reasoning_content": "The tool said 3."}]},
        {"id": "llamafactory", "tools": json.dumps([ADD["function"]]), "conversations": [
            {"from": "human", "value": "1+2?"}, {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 1, "b": 2}}'},
            {"from": "observation", "value": "3"}, {"from": "gpt", "value": "<think>\nThe tool said 3.\n</think>\n\n3"}]},
        {"id": "xlam", "query": "1+2?", "answers": '[{"name": "add", "arguments": {"a": 1, "b": 2}}]',
         "tools": json.dumps([ADD["function"]])},
        {"id": "broken", "query": "1+2?", "answers": '[{"arguments": {}}]', "tools": "[]"},
    ]
    for row in rows:
        (tmp_path / f"{row['id']}.jsonl").write_text(json.dumps(row) + "\n")
    openai, sharegpt = (compact(load(tmp_path / f"{n}.jsonl")["messages"][0].to_list()) for n in ("openai", "llamafactory"))
    assert openai[1] == {"role": "assistant", "content": "", "tool_calls": calls}
    assert openai[2] == {"role": "tool", "content": "3", "tool_call_id": "c1"}
    assert openai[3] == sharegpt[3] == {"role": "assistant", "content": "3", "reasoning": "The tool said 3."}
    assert sharegpt[1]["tool_calls"][0]["function"] == calls[0]["function"]
    assert sharegpt[2]["tool_call_id"] == sharegpt[1]["tool_calls"][0]["id"]  # the observation answers the call before it
    xlam = load(tmp_path / "xlam.jsonl")
    assert compact(xlam["messages"][0].to_list())[1]["tool_calls"][0]["function"] == calls[0]["function"]
    assert [json.loads(t) for t in xlam["tools"][0]] == [ADD] == [json.loads(t) for t in load(tmp_path / "openai.jsonl")["tools"][0]]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text((tmp_path / "xlam.jsonl").read_text() + (tmp_path / "broken.jsonl").read_text())
    stage = write_input(tmp_path / "run", mixed)
    assert read_shards(stage)["id"].to_list() == ["xlam"]
    assert read_shards(stage, "dropped-*.parquet")["drop_reason"].to_list() == ["bad_tool_call"]
