"""The recipe flow under Prefect's test harness: each step a cached step task, the same rows as `aligndata recipe run`,
a re-run served from the cache, and an edited user stage recomputed with the steps after it."""
import json
import sys

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.recipe import recipe_flow
from pipeline.core import codehash
from pipeline.core.rundir import StageMismatch

STAGE = "import polars as pl\n\n\ndef mark_source(df, *, suffix):\n    return df.with_columns(pl.col('source') + suffix + '{v}')\n"

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_recipe_flow_runs_steps_as_cached_tasks(tmp_path, step_calls, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "flow_stage.py").write_text(STAGE.format(v="-1"))
    recipe = {"plan": {"n": 6, "seed": 2}, "engines": {"fake": {"backend": "fake", "model": "m"}}, "engine": "fake",
              "steps": [{"stage": "magpie.synthesize", "params": {"max_tokens": 16}, "shard_size": 3},
                        {"stage": "flow_stage:mark_source", "params": {"suffix": "-s"}},
                        {"stage": "filter", "params": {"where": "source = 'magpie-s-1'", "reason": "not_marked"}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    export = recipe_flow(out=str(tmp_path / "flow"), recipe=str(path))
    assert step_calls == ["magpie-synthesize", "mark_source", "filter"]
    rows = pl.read_parquet(export)
    assert rows.height == 6 and set(rows["source"]) == {"magpie-s-1"}
    result = CliRunner().invoke(app, ["recipe", "run", str(path), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "cli" / "export" / "data.parquet").equals(rows)

    step_calls.clear()
    assert recipe_flow(out=str(tmp_path / "flow"), recipe=str(path)) == export and step_calls == []  # all cached

    # the user edits the stage: the cache misses its step, and the runner refuses to mix old and new shards; with
    # recompute, that step and the ones after it run again (the first is still a cache hit)
    (tmp_path / "flow_stage.py").write_text(STAGE.format(v="-2"))
    sys.modules.pop("flow_stage", None)
    codehash.clear_caches()
    with pytest.raises(StageMismatch, match=r"mark_source was made with different \['code'\]"):
        recipe_flow(out=str(tmp_path / "flow"), recipe=str(path))
    step_calls.clear()
    recipe_flow(out=str(tmp_path / "flow"), recipe=str(path), recompute=True)
    assert step_calls == ["mark_source", "mark_source", "filter"]  # refused once, then run afresh
    dropped = pl.read_parquet(tmp_path / "flow" / "filter" / "dropped-00000.parquet")
    assert dropped.height == 6 and set(dropped["drop_reason"]) == {"not_marked"}
    manifest = [json.loads(line) for line in (tmp_path / "flow" / "manifest.jsonl").read_text().splitlines()]
    assert manifest[-2]["stage"] == "filter" and manifest[-2]["drops"] == {"not_marked": 6}
    sys.modules.pop("flow_stage", None)
