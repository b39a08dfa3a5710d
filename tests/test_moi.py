"""Mixture-of-Instructions packing (arXiv 2404.18410): length, domain balance, quotas, turn order, and the TRL export
of the packed samples."""
import json

import polars as pl
import pytest

from pipeline.select.moi import pack

PROMPTS = {"Math": "You solve math problems step by step.", "Coding & Debugging": "You are a careful programmer.",
           "*": "You are a helpful assistant."}


def rows(spec):
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(spec))], "source": ["t"] * len(spec),
                         "task_category": [d for d, _ in spec],
                         "messages": [[{"role": "system", "content": "old"}, {"role": "user", "content": q},
                                       {"role": "assistant", "content": f"answer to {q}"}] for _, q in spec],
                         "meta": ["{}"] * len(spec)})


def test_parts_alternate_domains_keep_their_turn_order_and_fit_the_length():
    df = rows([("Math", "m1 " * 10), ("Math", "m2 " * 10), ("Math", "m3 " * 10),
               ("Coding & Debugging", "c1 " * 10), ("Coding & Debugging", "c2 " * 10), ("Planning", "p1 " * 10)])
    out = pack(df, system_prompts=PROMPTS, max_tokens=60)
    parts = [json.loads(m)["moi"]["parts"] for m in out["meta"]]
    assert [p for sample in parts for p in sample] == ["r3", "r0", "r5", "r4", "r1", "r2"]  # round-robin, sorted domains
    for sample, messages in zip(parts, out["messages"].to_list()):
        assert len(messages) == 3 * len(sample) and sum(-(-len(m["content"]) // 4) for m in messages) <= 60
        assert [m["role"] for m in messages] == ["system", "user", "assistant"] * len(sample)
    assert out["messages"][0].to_list()[0] == {"role": "system", "content": PROMPTS["Coding & Debugging"]}
    assert out["messages"][0].to_list()[3]["content"] == PROMPTS["Math"]  # each part under its own domain's prompt
    assert "old" not in {m["content"] for ms in out["messages"].to_list() for m in ms}


def test_quotas_and_over_length_rows_are_counted_drops():
    df = rows([("Math", "short"), ("Math", "also short"), ("Math", "third"), ("Planning", "x " * 400)])
    out = pack(df, system_prompts=PROMPTS, max_tokens=100, quotas={"Math": 2})
    dropped = out.filter(pl.col("drop_reason").is_not_null())
    assert dict(zip(dropped["id"], dropped["drop_reason"])) == {"r2": "over_quota", "r3": "too_long"}
    kept = out.filter(pl.col("drop_reason").is_null())
    assert [json.loads(m)["moi"]["parts"] for m in kept["meta"]] == [["r0", "r1"]]
    with pytest.raises(ValueError, match="domain 'Math', which has no system prompt"):
        pack(df, system_prompts={"Planning": "p"})


def test_the_packed_samples_go_through_the_trl_export(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app
    from pipeline.core.rundir import write_shard

    write_shard(rows([("Math", "What is 2+2?"), ("Coding & Debugging", "Fix my loop."), ("Math", "What is 3+3?")]),
                tmp_path / "tagged.parquet")
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    result = CliRunner().invoke(app, ["moi", "--input", str(tmp_path / "tagged.parquet"), "--out", str(tmp_path / "run"),
                                      "--system-prompts", str(tmp_path / "prompts.json"), "--max-tokens", "64"])
    assert result.exit_code == 0, result.output
    exported = CliRunner().invoke(app, ["export", "--input", str(tmp_path / "run" / "export" / "data.parquet"),
                                        "--out", str(tmp_path / "trl"), "--format", "trl"])
    assert exported.exit_code == 0, exported.output
    sft = pl.read_parquet(tmp_path / "trl" / "sft.parquet").to_dicts()
    assert sft and all([m["role"] for m in r["messages"]][:3] == ["system", "user", "assistant"] for r in sft)
    assert sum(len(r["messages"]) for r in sft) == 9
