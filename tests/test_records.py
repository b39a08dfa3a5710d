import json

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.core.rundir import append_manifest, read_manifest, read_records, write_shard
from pipeline.core.records import SCHEMA, RecordError, conform


def frame(**overrides):
    data = {"id": ["a", "b"], "source": ["magpie"] * 2,
            "messages": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]],
            "meta": ["{}", '{"seed": 1}']}
    data.update(overrides)
    return pl.DataFrame(data)


def test_conform_fills_optional_columns_and_orders_them():
    table = conform(frame())
    assert table.column_names[:6] == ["id", "parent_id", "source", "messages", "chosen", "rejected"]
    assert table.column_names == SCHEMA.names and table.column_names[-2:] == ["drop_reason", "meta"]
    assert table.column("chosen").null_count == 2


@pytest.mark.parametrize("overrides, message", [
    ({"score": [1, 2]}, "unknown column(s) ['score']"),
    ({"id": ["a", None]}, "row 1 (id=None) field 'id' is null"),
    ({"id": ["a", "a"]}, "row 0 (id='a') field 'id' is duplicated"),
    ({"meta": ["{}", "[1]"]}, "row 1 (id='b') field 'meta' is not a JSON object"),
    ({"messages": [[{"role": "user", "content": "x"}], [{"role": "robot", "content": "x"}]]}, "row 1 (id='b') field 'messages' has a role"),
])
def test_conform_names_place_row_and_field(overrides, message):
    with pytest.raises(RecordError, match="^in.parquet: " + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        conform(frame(**overrides), where="in.parquet")


def test_write_shard_is_atomic_and_round_trips(tmp_path):
    path = write_shard(frame(), tmp_path / "s" / "shard-00000.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["shard-00000.parquet"]  # no temp file left behind
    assert read_records(path)["id"].to_list() == ["a", "b"]
    with pytest.raises(RecordError):
        write_shard(frame(extra=[1, 2]), tmp_path / "s" / "shard-00001.parquet")
    assert not (tmp_path / "s" / "shard-00001.parquet").exists()


def test_manifest_appends_and_skips_a_torn_line(tmp_path):
    append_manifest(tmp_path, {"stage": "a", "rows_in": 1})
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write('{"stage": "b", "rows')  # a crash mid-write
    entries = read_manifest(tmp_path)
    assert [e["stage"] for e in entries] == ["a"] and "time" in entries[0]
    assert json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])["rows_in"] == 1


def test_first_instructions_take_each_rows_first_user_turn_in_polars():
    from pipeline.core.records import first_instructions

    df = pl.DataFrame({"messages": [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
         {"role": "assistant", "content": "a"}, {"role": "user", "content": "second"}],
        [{"role": "assistant", "content": "no question"}], [], None]})
    assert first_instructions(df) == ["first", "", "", ""]
    assert first_instructions(df.clear()) == []


def test_write_shard_writes_only_the_masked_rows_one_row_group_at_a_time(tmp_path, monkeypatch):
    from pipeline.core import rundir

    monkeypatch.setattr(rundir, "ROW_GROUP", 4)
    ids = [f"r{i}" for i in range(10)] + ["r0"]  # r0 twice: only the second one is masked out
    df = pl.DataFrame({"id": ids, "source": "t", "meta": "{}",
                       "messages": [[{"role": "user", "content": i}] for i in ids]})
    mask = pl.Series([i % 3 != 0 for i in range(10)] + [False])
    path = write_shard(df, tmp_path / "kept.parquet", rows=mask)
    written = pl.read_parquet(path)
    assert written["id"].to_list() == ["r1", "r2", "r4", "r5", "r7", "r8"]
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # rows 0-3, 4-7, 8-10
    with pytest.raises(RecordError, match="'r0' is duplicated"):
        write_shard(df, tmp_path / "all.parquet", rows=pl.Series([True] * 11))
    assert not (tmp_path / "all.parquet").exists()
