"""`aligndata plan`: a job on its sample predicts the full job, stage by stage; a selection keeps its k."""
import json

import pytest
from typer.testing import CliRunner

from pipeline.cli.commands import app
from pipeline.recipes.plan import compare, predict


def test_a_selection_to_k_rows_keeps_k_and_the_rest_scales():
    sample = {"stages": {"dedup": {"rows_in": 20, "rows_out": 15, "seconds": 2.0},
                         "selected": {"rows_in": 15, "rows_out": 5, "seconds": 0.5}}}
    assert [(p["rows_in"], p["rows_out"]) for p in predict(sample, 200, {"selected": 50})] == [(200, 150), (150, 50)]
    assert [(p["rows_in"], p["rows_out"]) for p in predict(sample, 200, {"selected": 500})] == [(200, 150), (150, 150)]


@pytest.mark.real_llm
def test_plan_then_run_the_plan_predicts_the_rows_and_tokens_of_each_stage(tmp_path):
    job = ["magpie", "--n", "16", "--engine", "llamacpp", "--shard-size", "4", "--instruction-max-tokens", "32",
           "--response-max-tokens", "32", "--seed", "3"]
    planned = CliRunner().invoke(app, ["plan", *job, "--plan-dir", str(tmp_path / "sample"), "--save",
                                       str(tmp_path / "plan.json")], catch_exceptions=False)
    assert planned.exit_code == 0, planned.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["source_rows"] == 16 and plan["sample_rows"] == 8
    ran = CliRunner().invoke(app, [*job, "--out", str(tmp_path / "run")], catch_exceptions=False)
    assert ran.exit_code == 0, ran.output
    rows = {r["stage"]: r for r in compare(plan["stages"], tmp_path / "run")}
    assert rows["instructions"]["rows_out_predicted"] == rows["instructions"]["rows_out_actual"] == 16
    for stage in ("instructions", "responses"):  # tokens per row hold from 8 rows to 16: within a factor of 1.5
        assert 0.67 <= rows[stage]["tokens_ratio"] <= 1.5, rows[stage]
