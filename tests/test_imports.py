import json

import polars as pl
import pytest

from pipeline.core.inputs import InputError, load
from pipeline.core.records import compact, conform


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_messages_sharegpt_and_alpaca_become_records(tmp_path):
    openai = write_jsonl(tmp_path / "a.jsonl", [{"id": 7, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    sharegpt = tmp_path / "b.parquet"
    pl.DataFrame({"conversations": [[{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]]}).write_parquet(sharegpt)
    alpaca = write_jsonl(tmp_path / "c.jsonl", [{"instruction": "Add", "input": "1+1", "output": "2"}, {"instruction": "Hi", "input": "", "output": "Hello"}])
    a, b, c = load(openai), load(sharegpt), load(alpaca)
    assert a["id"].to_list() == ["7"] and compact(a["messages"][0].to_list())[1] == {"role": "assistant", "content": "a"}
    assert [m["role"] for m in b["messages"][0].to_list()] == ["system", "user", "assistant"]
    assert c["messages"].to_list()[0][0]["content"] == "Add\n\n1+1" and c["messages"].to_list()[1][0]["content"] == "Hi"
    for df in (a, b, c):
        conform(df)


def test_datasets_directory(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"instruction": ["x"], "output": ["y"]}).save_to_disk(str(tmp_path / "ds"))
    assert [compact(c) for c in load(tmp_path / "ds")["messages"].to_list()] == [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]


@pytest.mark.parametrize("rows, message", [
    ([{"conversations": [{"from": "human", "value": "x"}, {"from": "robot", "value": "y"}]}], "row 0 field 'conversations\\[1\\].from': 'robot'"),
    ([{"messages": [{"role": "user", "content": "x"}]}, {"messages": []}], "row 1 field 'messages' is empty"),
    ([{"instruction": "x", "output": None}], "row 0 field 'output': expected a string"),
    ([{"text": "x"}], "cannot tell the format from columns \\['text'\\]"),
    ([{"id": 1, "instruction": "x", "output": "y"}, {"id": 1, "instruction": "z", "output": "w"}], "row 1 field 'id' has the duplicate value '1'"),
])
def test_strict_names_file_row_and_field(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError, match=f"bad.jsonl: {message}"):
        load(path, strict=True)


def test_broken_json_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(InputError, match="x.jsonl: line 2 \\(column 18\\) is not valid JSON.*--salvage"):
        load(path)


REAL_EXPORT = [  # what real ShareGPT exports hold, one row per case, with the reason each must be quarantined for
    ({"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, None),
    ({"id": "e", "conversations": []}, "empty_conversation"),
    ({"id": "n", "conversations": None}, "empty_conversation"),
    ({"id": "s", "conversations": "hello"}, "not_a_list"),
    ({"id": "t", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]}, "empty_turn"),
    ({"id": "x", "conversations": [{"from": "human", "value": ["q"]}]}, "not_text"),
    ({"id": "r", "conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}]},
     "bad_tool_call"),  # LLaMA-Factory's tool-call turn, with no function name
    ({"id": "u", "conversations": [{"from": "human", "value": "q"}, {"from": "narrator", "value": "x"}]},
     "unknown_role:narrator"),
    ({"id": "a", "conversations": [{"from": "gpt", "value": "only the assistant"}]}, "no_user_turn"),
    ({"id": "ok", "conversations": [{"from": "human", "value": "again"}, {"from": "gpt", "value": "a"}]}, "duplicate_id"),
    ("just a string", "not_an_object"),
    ({"id": "split", "conversations": [{"from": "gpt", "value": "...continued"}, {"from": "bing", "value": "more"},
                                       {"from": "human", "value": "thanks, and?"}, {"from": "chatgpt", "value": "b"}]}, None),
    ({"id": "roles", "conversations": [{"from": "system", "value": "s"}, {"from": "user", "value": "q"},
                                       {"from": "model", "value": "a"}, {"from": "observation", "value": "o"}]}, None),
]


def test_real_export_rows_are_quarantined_with_a_counted_reason_and_the_rest_kept(tmp_path):
    from pipeline.core.rundir import read_manifest, read_shards
    from pipeline.recipes import write_input

    path = write_jsonl(tmp_path / "sharegpt.jsonl", [row for row, _ in REAL_EXPORT])
    input_dir = write_input(tmp_path / "run", path)
    kept, dropped = read_shards(input_dir), read_shards(input_dir, "dropped-*.parquet")
    assert kept["id"].to_list() == ["ok", "split", "roles"]
    assert sorted(dropped["drop_reason"].to_list()) == sorted(r for _, r in REAL_EXPORT if r)
    [entry] = [e for e in read_manifest(tmp_path / "run") if e["stage"] == "input"]
    assert entry["rows_in"] == len(REAL_EXPORT) and entry["rows_out"] == 3
    assert sum(entry["drops"].values()) == len(REAL_EXPORT) - 3
    # the split chat loses its two leading assistant turns (counted); roles of other exports are mapped
    split = kept.filter(kept["id"] == "split")["messages"][0].to_list()
    assert [m["role"] for m in split] == ["user", "assistant"] and entry["repairs"] == {"leading_assistant_turns_removed": 2}
    roles = kept.filter(kept["id"] == "roles")["messages"][0].to_list()
    assert [m["role"] for m in roles] == ["system", "user", "assistant", "tool"]
    raw = json.loads(dropped.filter(dropped["drop_reason"] == "unknown_role:narrator")["meta"][0])["import"]["raw"]
    assert "narrator" in raw  # the quarantined row's text is kept for reading


def test_another_input_on_the_same_run_is_refused_and_a_stage_dir_never_brings_dropped_rows(tmp_path):
    from pipeline.core.rundir import StageMismatch, read_shards
    from pipeline.recipes import write_input

    first = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}, {"instruction": "", "output": "z"}])
    write_input(tmp_path / "run", first)
    write_input(tmp_path / "run", first)  # the same input resumes
    other = write_jsonl(tmp_path / "a2.jsonl", [{"instruction": "other", "output": "y"}])
    with pytest.raises(StageMismatch, match="different \\['content', 'file'\\]"):
        write_input(tmp_path / "run", other)
    with pytest.raises(StageMismatch, match="different \\['format'\\]"):
        write_input(tmp_path / "run", first, "instructions")
    again = write_input(tmp_path / "second", tmp_path / "run" / "input")  # a stage directory as input
    assert read_shards(again).height == 1 and read_shards(again, "dropped-*.parquet").height == 0  # no dropped rows back


@pytest.mark.parametrize("name, content, message", [
    ("cut.json", b'[{"instruction": "a", "output": "b"}, {"instruction": "c", "outp', "the JSON array is cut off \\(truncated\\) after 1 complete records"),
    ("latin1.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n', "line 2 \\(byte 56\\) is not UTF-8"),
    ("object.json", b'{\n "rows": [1, 2]\n}\n', "line 1 \\(column 3\\) is not valid JSON"),
    ("notes.txt", b"hello\n", "unsupported file type '.txt'"),
    ("broken.parquet", b"PAR1 not really", "not a readable Parquet file"),
    ("empty.jsonl", b"\n\n", "no rows; nothing to do"),
])
def test_bad_files_are_one_line_errors_naming_the_file_and_the_place(tmp_path, name, content, message):
    from pipeline.recipes import write_input

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"{name}: {message}"):
        write_input(tmp_path / "run", path)


def test_salvage_keeps_complete_records_and_counts_the_rest(tmp_path):
    from pipeline.core.rundir import read_manifest, read_shards
    from pipeline.recipes import write_input

    cut = tmp_path / "cut.json"
    cut.write_bytes(b'[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}, {"instru')
    assert read_shards(write_input(tmp_path / "r1", cut, salvage=True)).height == 2
    assert read_manifest(tmp_path / "r1")[0]["drops"] == {"truncated_tail": 1}
    lines = tmp_path / "mixed.jsonl"
    lines.write_bytes(b'{"instruction": "a", "output": "b"}\nnot json\n{"instruction": "\xff", "output": "b"}\n')
    assert read_shards(write_input(tmp_path / "r2", lines, salvage=True)).height == 1
    assert read_manifest(tmp_path / "r2")[0]["drops"] == {"bad_line": 2}


def test_bom_and_mixed_types_across_rows_are_read(tmp_path):
    path = tmp_path / "bom.json"
    rows = [{"id": 1, "instruction": "a", "output": "b"}, {"id": "two", "instruction": "c", "output": "d", "extra": [1]}]
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    assert load(path)["id"].to_list() == ["1", "two"]
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + b"\n".join(json.dumps(r).encode() for r in rows))
    assert load(lines)["id"].to_list() == ["1", "two"]


def test_import_reads_in_batches_of_bounded_size(tmp_path):
    from pipeline.core.inputs import read_batches

    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"instruction": f"q{i}", "output": "a"} for i in range(25)]))
    assert [len(b.rows) for b in read_batches(path, batch_rows=10)] == [10, 10, 5]
