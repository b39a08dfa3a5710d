"""prefect.yaml against a real `prefect server` on 127.0.0.1: register every deployment, run the CPU smoke
deployment through a process worker on the offline default model, and check the run's outputs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml

from pipeline.engines.llamacpp_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def test_prefect_yaml_shares_engines_through_anchors_and_schedules_the_gpu_run():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"nightly-gpu", "cpu-smoke", "publish-manual"}
    nightly = deployments["nightly-gpu"]
    assert nightly["work_pool"]["name"] == "gpu" and nightly["concurrency_limit"] == 1
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert nightly["parameters"]["engine"] == config["definitions"]["engines"]["llama3_gpu"]
    assert deployments["cpu-smoke"]["parameters"]["engine"] == config["definitions"]["engines"]["smollm2_cpu"]
    assert "schedules" not in deployments["publish-manual"]
    from flows.end_to_end import end_to_end_flow
    from flows.publish import publish_flow

    # every deployment's parameters are parameters of its flow (a typo would fail only at run time)
    flows = {"flows/end_to_end.py:end_to_end_flow": end_to_end_flow, "flows/publish.py:publish_flow": publish_flow}
    for d in deployments.values():
        assert set(d["parameters"]) <= set(flows[d["entrypoint"]].parameters.properties), d["name"]


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.real_llm
@pytest.mark.vllm
def test_deployments_on_a_prefect_server_with_a_process_worker(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    logs = tmp_path / "logs"
    logs.mkdir()

    def prefect(*args, timeout=120):
        done = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        _wait(lambda: httpx.get(f"{api}/health", timeout=2).json() is True, 120, "prefect server")
        for pool in ("cpu", "gpu"):
            prefect("work-pool", "create", pool, "--type", "process")
        prefect("deploy", "--all")
        deployments = httpx.post(f"{api}/deployments/filter", json={}).json()
        assert sorted(d["name"] for d in deployments) == ["cpu-smoke", "nightly-gpu", "publish-manual"]
        nightly = next(d for d in deployments if d["name"] == "nightly-gpu")
        assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"

        out = tmp_path / "smoke"
        params = {"out": str(out), "n": 6, "curate": {"k": 3}}
        prefect("deployment", "run", "end-to-end/cpu-smoke", "--params", json.dumps(params))
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "cpu", "--type", "process"], cwd=ROOT, env=env,
                                  stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)

        smoke = next(d["id"] for d in deployments if d["name"] == "cpu-smoke")

        def finished():
            runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [smoke]}}}).json()
            states = [r["state"]["type"] for r in runs]
            assert "FAILED" not in states and "CRASHED" not in states, (logs / "worker.log").read_text()[-4000:]
            return states == ["COMPLETED"]

        _wait(finished, 540, "the cpu-smoke flow run")
        # the scheduler (which SQLAlchemy 2.1 breaks) has created the nightly deployment's cron runs
        def nightly_runs():
            return httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [nightly["id"]]}}}).json()

        _wait(lambda: len(nightly_runs()) > 0, 120, "the scheduler")
        scheduled = nightly_runs()
        assert {r["state"]["type"] for r in scheduled} == {"SCHEDULED"}
        assert all(r["expected_start_time"].endswith("T02:00:00Z") for r in scheduled)
    finally:
        for process in (worker, server):
            if process is not None:
                os.killpg(process.pid, signal.SIGINT)  # the worker stops on SIGINT, not SIGTERM
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
    exported = pl.read_parquet(out / "export" / "data.parquet")
    assert 0 < exported.height <= 3
    stages = [json.loads(line)["stage"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {"instructions", "responses", "scored", "selected", "export"} <= set(stages)
    assert (out / "export" / "README.md").exists() and (out / "report" / "index.html").exists()


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} did not finish in {seconds} s")
