"""The run report: coverage over embedding clusters, and `aligndata report` on a run directory."""
import json

import numpy as np
import polars as pl
from typer.testing import CliRunner

from pipeline.ship import report
from pipeline.cli.commands import app
from pipeline.engines import EngineSpec
from pipeline.recipes import magpie_job


def test_coverage_counts_selected_rows_per_embedding_cluster():
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8) * 10
    x = np.concatenate([c + rng.normal(0, 0.1, (6, 8)) for c in centers])
    pool = pl.DataFrame({"id": [f"r{i}" for i in range(18)], "embedding": x.tolist()})
    cov = report.coverage(pool, {"r0", "r1", "r6"}, clusters=3)
    assert sorted(cov["clusters"]) == [(6, 0), (6, 1), (6, 2)]  # blob 0 has two selected, blob 1 one, blob 2 none
    assert cov["xy"].shape == (18, 2) and cov["selected"].sum() == 3
    assert report.coverage(pool.head(3), set()) == {}  # too few rows to cluster


def test_report_command_on_a_run(tmp_path):
    spec = EngineSpec.make("fake", "fake-model", options={"script": {"<|im_start|>assistant\n": "An answer."}})
    magpie_job(tmp_path / "run", n=6, seed=0, engine=spec, shard_size=3)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "<svg" in page and "<td>instructions-filtered</td>" in page and "<h2>Funnel</h2>" in page
    summary = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert list(summary["funnel"]) == ["instructions", "instructions-filtered", "responses", "filtered"]
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "is it a run directory?" in missing.output


def test_report_shows_dropped_rows_per_reason_and_the_ends_of_the_selection(tmp_path):
    from pathlib import Path

    from pipeline.recipes import curate_job

    data = tmp_path / "data.jsonl"
    planted = (Path(__file__).parent / "data" / "planted.jsonl").read_text()
    data.write_text(planted + json.dumps({"id": "empty", "instruction": " ", "output": "x"}) + "\n")
    spec = EngineSpec.make("fake", "report-scorer")
    curate_job(tmp_path / "run", input_path=data, engine=spec, k=5, dedup=("exact",), fmt=None)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "<h2>What was dropped</h2>" in page
    assert "<td>quality-filtered</td><td>instruction_words_at_least</td><td>junk-0</td><td></td><td>ok</td><td>ok</td>" in page
    assert "<td>input</td><td>empty_turn</td>" in page  # a quarantined row shows its raw text
    assert "&quot;instruction&quot;: &quot; &quot;" in page
    assert "<h2>Top 5 selected rows by deita_score</h2>" in page and "<h2>Bottom 5 selected rows by deita_score</h2>" in page
    assert "<tr><td>12.250</td><td>normal-" in page  # the fake scorer's 3.5 x 3.5, shown with each row
