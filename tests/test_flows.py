"""The Magpie flow under Prefect's test harness (an ephemeral API in a temporary home)."""
import polars as pl
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.magpie import magpie_flow
from pipeline.io import read_shards


@pytest.fixture(scope="module", autouse=True)
def harness(tmp_path_factory):
    import os
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_magpie_flow_runs_each_step_as_a_task(tmp_path):
    engine = {"backend": "fake", "model": "flow-model", "options": {"script": {"<|im_start|>assistant\n": "An answer."}}}
    summary = magpie_flow(out=str(tmp_path), n=6, seed=0, engine=engine, turns=2, shard_size=4)
    assert list(summary["stages"]) == ["instructions", "instructions-filtered", "responses", "followups-2", "responses-2", "filtered"]
    assert summary["stages"]["instructions"]["rows_in"] == 6
    exported = pl.read_parquet(tmp_path / "export" / "data.parquet")
    assert exported.height == summary["stages"]["filtered"]["rows_out"] == read_shards(tmp_path / "filtered").height > 0
    # a second run of the same flow resumes: nothing is recomputed, nothing duplicated
    again = magpie_flow(out=str(tmp_path), n=6, seed=0, engine=engine, turns=2, shard_size=4)
    assert again == summary
