"""Reading what users have: compressed files, directories and patterns of shards, JSON objects wrapping the rows,
conversations stored as JSON text, either turn keys under either field, CSV/TSV (pipeline.core.inputs)."""
import bz2
import gzip
import json
import lzma

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.core.inputs import InputError, content_hash, load, read_batches, write_input
from pipeline.core.rundir import StageMismatch, read_manifest, read_shards
from pipeline.core.records import compact

ROWS = [{"id": f"r{i}", "instruction": f"question {i}", "output": f"answer {i}"} for i in range(25)]


def jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def zstd(data: bytes, path) -> None:
    import pyarrow as pa

    with pa.CompressedOutputStream(str(path), "zstd") as out:
        out.write(data)


def compress(codec: str, data: bytes, path):
    if codec == "zstd":
        zstd(data, path)
    else:
        packed = {"gzip": gzip.compress, "bz2": lambda d: bz2.compress(d, 1), "xz": lzma.compress}[codec](data)
        path.write_bytes(packed)  # bz2 in 100 kB blocks: a cut one keeps its complete blocks
    return path


def pairs(df):
    return [(rid, [m["content"] for m in messages]) for rid, messages in zip(df["id"], bare(df["messages"].to_list()))]


EXPECTED = [(r["id"], [r["instruction"], r["output"]]) for r in ROWS]


# ---- compressed files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("codec, name", [("gzip", "data.jsonl.gz"), ("zstd", "data.jsonl.zst"), ("bz2", "data.jsonl.bz2"),
                                         ("xz", "data.jsonl.xz"), ("gzip", "data.jsonl"), ("zstd", "data.gz")])
def test_compressed_json_lines_are_known_by_their_bytes_not_their_name(tmp_path, codec, name):
    path = compress(codec, jsonl(ROWS), tmp_path / name)
    assert pairs(load(path)) == EXPECTED
    assert [len(b.rows) for b in read_batches(path, batch_rows=10)] == [10, 10, 5]


@pytest.mark.parametrize("codec", ["gzip", "zstd", "bz2", "xz"])
def test_compressed_json_arrays_and_wrapped_rows(tmp_path, codec):
    array = compress(codec, b"\xef\xbb\xbf" + json.dumps(ROWS).encode(), tmp_path / f"array.json.{codec}")
    wrapped = compress(codec, json.dumps({"version": 2, "data": ROWS}, indent=1).encode(), tmp_path / f"wrapped.json.{codec}")
    assert pairs(load(array)) == EXPECTED and pairs(load(wrapped)) == EXPECTED


@pytest.mark.parametrize("codec", ["gzip", "zstd", "bz2", "xz"])
def test_a_cut_off_compressed_file_is_one_line_naming_it_and_salvage_keeps_the_complete_lines(tmp_path, codec):
    import hashlib

    # text that compresses little, so that the kept part spans several reads of every decompressor
    many = [{"instruction": f"question {hashlib.sha256(str(i).encode()).hexdigest()}", "output": "answer"} for i in range(8_000)]
    whole = compress(codec, jsonl(many), tmp_path / "whole.bin").read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(InputError, match=f"cut.jsonl.gz: the {codec} data is cut off or corrupt after line \\d+ .*--salvage") as err:
        write_input(tmp_path / "run", path)
    assert "\n" not in str(err.value)
    kept = read_shards(write_input(tmp_path / "salvaged", path, salvage=True))
    [entry] = read_manifest(tmp_path / "salvaged")
    assert 0 < kept.height < len(many) and entry["drops"] == {"truncated_tail": 1}
    assert [m[0]["content"] for m in bare(kept["messages"].to_list())] == [r["instruction"] for r in many[:kept.height]]


def test_a_compressed_file_is_streamed_not_decompressed_whole(tmp_path):
    whole = gzip.compress(jsonl(ROWS * 40))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    batches = read_batches(path, batch_rows=10)
    assert len(next(batches).rows) == 10  # the first rows come before the cut is reached
    with pytest.raises(InputError, match="cut off"):
        list(batches)


def test_bad_utf8_in_a_compressed_file_names_its_line(tmp_path):
    path = compress("gzip", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n', tmp_path / "l.jsonl.gz")
    with pytest.raises(InputError, match="l.jsonl.gz: line 2 \\(byte 56 after decompression\\) is not UTF-8"):
        load(path)


def test_a_compressed_parquet_file_and_a_zip_are_refused_with_what_to_do(tmp_path):
    plain = tmp_path / "d.parquet"
    pl.DataFrame({"instruction": ["x"], "output": ["y"]}).write_parquet(plain)
    assert bare(load(plain)["messages"].to_list()) == [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]
    packed = compress("gzip", plain.read_bytes(), tmp_path / "d.parquet.gz")
    with pytest.raises(InputError, match="d.parquet.gz: a Parquet file compressed with gzip; decompress it first"):
        load(packed)
    archive = tmp_path / "d.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(InputError, match="d.zip: a zip archive; unzip it"):
        load(archive)
    text = compress("gzip", b"hello world\n", tmp_path / "notes.txt.gz")
    with pytest.raises(InputError, match="notes.txt.gz: unsupported file type '.gz' \\(gzip-compressed, holding neither"):
        load(text)


# ---- directories and patterns ---------------------------------------------------------------------------

def shards(folder, *, gz_last=True):
    folder.mkdir()
    for i, name in reversed(list(enumerate(["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl.gz"]))):
        data = jsonl(ROWS[i * 10:(i + 1) * 10])
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") and gz_last else data)
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-00000.jsonl.crc").write_bytes(b"\x00\x01")
    (folder / "README.md").write_text("# not data\n")
    return folder


def test_a_directory_of_json_lines_shards_is_read_in_sorted_order(tmp_path):
    folder = shards(tmp_path / "export")
    kept = read_shards(write_input(tmp_path / "run", folder))
    assert pairs(kept) == EXPECTED  # part-00000, part-00001, then the gzipped part-00002
    metas = [json.loads(m)["import"] for m in kept["meta"]]
    assert (metas[0]["file"], metas[0]["row"]) == ("part-00000.jsonl", 0)
    assert (metas[24]["file"], metas[24]["row"]) == ("part-00002.jsonl.gz", 4)
    assert [e["rows_out"] for e in read_manifest(tmp_path / "run")] == [10, 10, 5]  # a shard per file


def test_rows_without_ids_in_several_files_get_distinct_ids_and_errors_name_the_shard(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for name in ("a.json", "b.json"):
        (folder / name).write_text(json.dumps([{"instruction": "same", "output": "row"}, {"instruction": "x", "output": ""}]))
    df = load(folder, strict=False)
    assert df.height == 2 and df["id"].n_unique() == 2
    with pytest.raises(InputError, match="d/a.json: row 1 field 'output' is empty"):
        load(folder)


def test_a_directory_changes_its_content_hash_when_a_shard_changes(tmp_path):
    folder = shards(tmp_path / "export")
    before = content_hash(folder)
    (folder / "README.md").write_text("edited, but never read\n")
    assert content_hash(folder) == before
    write_input(tmp_path / "run", folder)
    (folder / "part-00001.jsonl").write_bytes(jsonl(ROWS[10:19]))
    assert content_hash(folder) != before
    with pytest.raises(StageMismatch, match="different \\['content'\\]"):
        write_input(tmp_path / "run", folder)


def test_a_glob_pattern_reads_the_files_it_matches_and_hashes_only_those(tmp_path):
    folder = shards(tmp_path / "export", gz_last=False)
    pattern = folder / "part-*.jsonl"
    assert pairs(load(pattern)) == EXPECTED[:20]  # part-00002.jsonl.gz does not match
    before = content_hash(pattern)
    (folder / "part-00002.jsonl.gz").write_bytes(jsonl(ROWS[:1]))
    assert content_hash(pattern) == before
    (folder / "part-00000.jsonl").write_bytes(jsonl(ROWS[:9]))
    assert content_hash(pattern) != before
    recursive = load(tmp_path / "**" / "part-0000[12]*")
    assert recursive["id"].to_list() == [r["id"] for r in ROWS[10:20]] + ["r0"]  # part-00001.jsonl, part-00002.jsonl.gz
    with pytest.raises(InputError, match="export/nothing-\\*.jsonl: no file matches this pattern"):
        write_input(tmp_path / "run", folder / "nothing-*.jsonl")


def test_a_directory_mixing_parquet_and_json_says_to_pass_a_pattern(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    pl.DataFrame(ROWS[:3]).write_parquet(folder / "a.parquet")
    (folder / "b.jsonl").write_bytes(jsonl(ROWS[3:5]))
    with pytest.raises(InputError, match="mixed: a directory with both JSON and Parquet files; .*--input '.*mixed/\\*.parquet'"):
        load(folder)
    assert load(folder / "*.parquet").height == 3
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="empty: a directory with no data files"):
        load(tmp_path / "empty")


def test_stage_directories_stay_kept_shards_only_and_a_run_directory_is_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl([{"instruction": "x", "output": "y"}, {"instruction": "", "output": "z"}]))
    stage = write_input(tmp_path / "run", path)
    assert list(stage.glob("dropped-*.parquet"))
    assert bare(load(stage)["messages"].to_list())[0][0]["content"] == "x"
    nested = tmp_path / "runs"
    nested.mkdir()
    stage.rename(nested / "input")
    assert load(nested).height == 1  # a stage directory below: its shards, never its dropped rows or stage.json
    (tmp_path / "run" / "input").mkdir()
    with pytest.raises(InputError, match="run: a run directory; pass its export/data.parquet"):
        load(tmp_path / "run")


# ---- JSON objects wrapping the rows ---------------------------------------------------------------------

@pytest.mark.parametrize("key", ["data", "rows", "train"])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_object_with_one_list_of_rows_is_read_incrementally(tmp_path, key, indent):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"name": "demo", "count": 25, key: ROWS, "splits": ["train"]}, indent=indent))
    assert pairs(load(path)) == EXPECTED
    assert [len(b.rows) for b in read_batches(path, batch_rows=10)] == [10, 10, 5]


def test_a_json_object_with_several_lists_of_rows_names_them_and_how_to_choose(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ROWS[:2], "test": ROWS[2:3]}))
    with pytest.raises(InputError, match="splits.json: a JSON object with 2 lists of rows \\('train', 'test'\\); keep the one "
                                         "to read, e.g. jq -c '.\\[\"train\"\\]\\[\\]' splits.json > train.jsonl") as err:
        load(path)
    assert "\n" not in str(err.value)


def test_a_cut_off_wrapped_list_is_named_and_salvage_keeps_its_complete_rows(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps({"data": ROWS[:3]})[:-30])
    with pytest.raises(InputError, match="cut.json: the JSON array under 'data' is cut off \\(truncated\\) after 2 complete records"):
        write_input(tmp_path / "run", path)
    assert read_shards(write_input(tmp_path / "salvaged", path, salvage=True))["id"].to_list() == ["r0", "r1"]


def test_json_lines_in_a_json_file_are_still_rows(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"id": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    assert load(one)["id"].to_list() == ["m"]  # one row with a list of objects, not a wrapper of its turns
    many = tmp_path / "many.json"
    many.write_bytes(jsonl([{"id": "x", "turns": [{"a": 1}]}, {"id": "y", "turns": [{"a": 2}]}]))
    with pytest.raises(InputError, match="many.json: cannot tell the format from columns \\['id', 'turns'\\]"):
        load(many)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(InputError, match="bad.json: line 2 \\(column 18\\) is not valid JSON"):
        load(bad)


# ---- conversations as JSON text, either keys, CSV --------------------------------------------------------

CHAT = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_conversations_stored_as_json_text_are_parsed(tmp_path):
    path = tmp_path / "export.parquet"
    pl.DataFrame({"id": ["ok", "sg", "text", "broken", "object", "empty"],
                  "messages": [json.dumps(CHAT), json.dumps([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]),
                               "hello", '[{"role": "user"', '{"role": "user", "content": "q"}', "[]"]}).write_parquet(path)
    kept = read_shards(write_input(tmp_path / "run", path))
    dropped = read_shards(tmp_path / "run" / "input", "dropped-*.parquet")
    assert kept["id"].to_list() == ["ok", "sg"] and bare(kept["messages"].to_list()) == [CHAT, CHAT]
    reasons = {json.loads(m)["import"]["raw"].split('"id": "')[1].split('"')[0]: r
               for m, r in zip(dropped["meta"], dropped["drop_reason"])}
    assert reasons == {"text": "not_a_list", "broken": "not_a_list", "object": "not_a_list", "empty": "empty_conversation"}
    lines = tmp_path / "export.jsonl"
    lines.write_bytes(jsonl([{"conversations": json.dumps([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])}]))
    assert bare(load(lines)["messages"].to_list()) == [CHAT]


def test_either_turn_keys_under_either_field_name(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(jsonl([
        {"id": "a", "messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"id": "b", "messages": [{"role": "user", "content": "q"}, {"from": "gpt", "value": "a"}]},
        {"id": "c", "messages": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
        {"id": "d", "messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
    ]))
    assert bare(load(path, strict=False)["messages"].to_list()) == [CHAT, CHAT]
    dropped = read_shards(write_input(tmp_path / "run", path), "dropped-*.parquet")
    assert dropped["drop_reason"].to_list() == ["unknown_role:robot", "not_text"]
    with pytest.raises(InputError, match="row 2 field 'messages\\[1\\].from': 'robot'"):
        load(path)
    sharegpt = tmp_path / "sharegpt.jsonl"
    sharegpt.write_bytes(jsonl([{"conversations": CHAT}, {"conversations": [{"from": "human", "value": "q"}, {"role": "assistant", "content": "a"}]}]))
    assert bare(load(sharegpt)["messages"].to_list()) == [CHAT, CHAT]


def bare(conversations: list) -> list:
    """Conversations without their null message fields (reasoning, tool calls), to compare with literals."""
    return [compact(c) for c in conversations]


def write_csv(path, header, rows, delimiter=","):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_and_tsv_with_messages_or_alpaca_columns(tmp_path):
    long = "word " * 40_000  # a cell over the csv module's 128 KiB default limit
    messages = write_csv(tmp_path / "chats.csv", ["id", "messages", "source_url"],
                         [["c1", json.dumps(CHAT), "https://a"], ["c2", json.dumps([{"role": "user", "content": long}]), "b"],
                          ["c3", "not json", "c"]])
    df = load(messages, strict=False)
    assert df["id"].to_list() == ["c1", "c2"] and bare(df["messages"].to_list())[0] == CHAT
    assert json.loads(df["meta"][0])["fields"] == {"source_url": "https://a"}
    assert read_shards(write_input(tmp_path / "run", messages), "dropped-*.parquet")["drop_reason"].to_list() == ["not_a_list"]
    alpaca = write_csv(tmp_path / "alpaca.tsv", ["instruction", "input", "output", "category"],
                       [["Add", "1+1", "2", "math"], ["Say hi\non two lines", "", "Hello", "chat"], ["Empty", "", "", "x"]],
                       delimiter="\t")
    kept = read_shards(write_input(tmp_path / "run2", alpaca))
    assert [m[0]["content"] for m in bare(kept["messages"].to_list())] == ["Add\n\n1+1", "Say hi\non two lines"]
    assert json.loads(kept["meta"][0])["category"] == "math" and kept["id"].n_unique() == 2
    assert read_shards(tmp_path / "run2" / "input", "dropped-*.parquet")["drop_reason"].to_list() == ["empty_turn"]
    packed = compress("zstd", (tmp_path / "alpaca.tsv").read_bytes(), tmp_path / "alpaca.tsv.zst")
    assert bare(load(packed, strict=False)["messages"].to_list()) == bare(kept["messages"].to_list())


def test_a_bad_csv_line_is_named_and_salvage_skips_it(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'instruction,output\n"multi\nline",ok\nfine,"a,b",extra\ncaf\xe9,x\nlast,one\n')
    with pytest.raises(InputError, match="t.csv: line 4 has 3 fields and the header 2; fix the line"):
        write_input(tmp_path / "run", path)
    kept = read_shards(write_input(tmp_path / "salvaged", path, salvage=True))
    assert [m[0]["content"] for m in bare(kept["messages"].to_list())] == ["multi\nline", "last"]
    assert read_manifest(tmp_path / "salvaged")[0]["drops"] == {"bad_line": 2}
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"instruction,output\nok,fine\ncaf\xe9,x\n")
    with pytest.raises(InputError, match="latin.csv: line 3 is not UTF-8"):
        load(latin)
    header_only = tmp_path / "header.csv"
    header_only.write_bytes(b"instruction,output\n")
    with pytest.raises(InputError, match="header.csv: no rows; nothing to do"):
        write_input(tmp_path / "run3", header_only)


def test_an_empty_id_is_no_id(tmp_path):
    path = write_csv(tmp_path / "ids.csv", ["id", "instruction", "output"], [["", "a", "b"], ["", "c", "d"], ["k", "e", "f"]])
    ids = load(path)["id"].to_list()
    assert len(set(ids)) == 3 and ids[2] == "k" and "" not in ids


# ---- the command line ------------------------------------------------------------------------------------

def test_the_command_line_reads_compressed_input_and_answers_bad_input_in_one_line(tmp_path):
    from pipeline.cli.commands import app

    runner = CliRunner()
    good = compress("gzip", jsonl([{"id": "a", "instruction": "Explain rain.", "output": "Water falls.", "input_quality": "good"}]),
                    tmp_path / "data.jsonl.gz")
    result = runner.invoke(app, ["magpie-filter", "--input", str(good), "--out", str(tmp_path / "run"), "--preset", "air"])
    assert result.exit_code == 0, result.output
    assert read_shards(tmp_path / "run" / "input")["id"].to_list() == ["a"]  # the input stage read it
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(jsonl(ROWS * 40))[:400])
    for bad, named in ((cut, "cut.jsonl.gz: the gzip data is cut off"), (tmp_path / "shards" / "part-*.jsonl", "part-*.jsonl: no file matches")):
        result = runner.invoke(app, ["curate", "--input", str(bad), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit) and named in result.output, \
            (result.output, result.exception)  # a usage exit, not an exception the CLI let through
        assert len(result.output.strip().splitlines()) <= 3, result.output


def test_a_file_whose_name_says_nothing_is_known_by_its_content(tmp_path):
    lines = tmp_path / "export.txt"
    lines.write_bytes(jsonl(ROWS[:2]))
    assert load(lines)["id"].to_list() == ["r0", "r1"]
    table = tmp_path / "t.parquet"
    pl.DataFrame(ROWS[:2]).write_parquet(table)
    renamed = tmp_path / "download"
    renamed.write_bytes(table.read_bytes())
    assert load(renamed)["id"].to_list() == ["r0", "r1"]
    packed = compress("xz", table.read_bytes(), tmp_path / "download.xz")
    with pytest.raises(InputError, match="download.xz: a Parquet file compressed with xz; decompress it first"):
        load(packed)


@pytest.mark.parametrize("codec", ["gzip", "zstd", "bz2", "xz"])
def test_a_broken_compressed_json_array_names_the_records_before_it(tmp_path, codec):
    path = compress(codec, json.dumps(ROWS[:3]).encode()[:-1] + b', {"x": tru}]', tmp_path / "a.json.cmp")
    with pytest.raises(InputError, match="a.json.cmp: the JSON array .* after 3 complete records, near byte \\d+ after decompression"):
        load(path)


def test_records_tables_get_the_same_checks_as_any_input(tmp_path):
    """A table with id, source and meta columns is read as aligndata records, every column kept, but its rows are
    checked like any input's: a repeated id, a row that is not an object, a conversation with an unknown role."""
    good = {"id": "a", "source": "import", "meta": "{}", "messages": [{"role": "user", "content": "hi"}], "deita_score": 3.0}
    rows = [good, {**good, "id": "b", "messages": [{"role": "robot", "content": "x"}]}, {**good, "deita_score": 5.0}, 5,
            {**good, "id": "c", "messages": [{"from": "human", "value": "hello"}]}]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = write_input(tmp_path / "run", path)
    kept = pl.read_parquet(stage / "shard-00000.parquet")
    assert kept["id"].to_list() == ["a", "c"] and kept["deita_score"].to_list() == [3.0, 3.0]
    assert bare(kept["messages"].to_list())[1] == [{"role": "user", "content": "hello"}]
    dropped = pl.read_parquet(stage / "dropped-00000.parquet")
    assert sorted(dropped["drop_reason"].to_list()) == ["duplicate_id", "not_an_object", "unknown_role:robot"]
