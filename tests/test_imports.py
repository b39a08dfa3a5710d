import json

import polars as pl
import pytest

from pipeline.core.inputs import InputError, load
from pipeline.core.records import conform


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_messages_sharegpt_and_alpaca_become_records(tmp_path):
    openai = write_jsonl(tmp_path / "a.jsonl", [{"id": 7, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    sharegpt = tmp_path / "b.parquet"
    pl.DataFrame({"conversations": [[{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]]}).write_parquet(sharegpt)
    alpaca = write_jsonl(tmp_path / "c.jsonl", [{"instruction": "Add", "input": "1+1", "output": "2"}, {"instruction": "Hi", "input": "", "output": "Hello"}])
    a, b, c = load(openai), load(sharegpt), load(alpaca)
    assert a["id"].to_list() == ["7"] and a["messages"][0].to_list()[1] == {"role": "assistant", "content": "a"}
    assert [m["role"] for m in b["messages"][0].to_list()] == ["system", "user", "assistant"]
    assert c["messages"].to_list()[0][0]["content"] == "Add\n\n1+1" and c["messages"].to_list()[1][0]["content"] == "Hi"
    for df in (a, b, c):
        conform(df)


def test_datasets_directory(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"instruction": ["x"], "output": ["y"]}).save_to_disk(str(tmp_path / "ds"))
    assert load(tmp_path / "ds")["messages"].to_list() == [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]


@pytest.mark.parametrize("rows, message", [
    ([{"conversations": [{"from": "human", "value": "x"}, {"from": "robot", "value": "y"}]}], "row 0 field 'conversations\\[1\\].from': 'robot'"),
    ([{"messages": [{"role": "user", "content": "x"}]}, {"messages": []}], "row 1 field 'messages': expected a non-empty list"),
    ([{"instruction": "x", "output": None}], "row 0 field 'instruction'/'output'"),
    ([{"text": "x"}], "cannot tell the format from columns \\['text'\\]"),
    ([{"id": 1, "instruction": "x", "output": "y"}, {"id": 1, "instruction": "z", "output": "w"}], "field 'id' has the duplicate value '1'"),
])
def test_bad_input_names_file_row_and_field(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError, match=f"bad.jsonl: {message}"):
        load(path)


def test_broken_json_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(InputError, match="x.jsonl: line 2 is not valid JSON"):
        load(path)
