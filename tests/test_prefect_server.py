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
    assert set(deployments) == {"nightly-gpu", "cpu-smoke", "publish-manual", "recipe-manual"}
    nightly = deployments["nightly-gpu"]
    assert nightly["work_pool"]["name"] == "gpu" and nightly["concurrency_limit"] == 1
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert nightly["parameters"]["engine"] == config["definitions"]["engines"]["llama3_gpu"]
    assert deployments["cpu-smoke"]["parameters"]["engine"] == config["definitions"]["engines"]["smollm2_cpu"]
    assert "schedules" not in deployments["publish-manual"]
    from flows.end_to_end import end_to_end_flow
    from flows.publish import publish_flow
    from flows.recipe import recipe_flow

    # every deployment's parameters are parameters of its flow (a typo would fail only at run time)
    flows = {"flows/end_to_end.py:end_to_end_flow": end_to_end_flow, "flows/publish.py:publish_flow": publish_flow,
             "flows/recipe.py:recipe_flow": recipe_flow}
    for d in deployments.values():
        assert set(d["parameters"]) <= set(flows[d["entrypoint"]].parameters.properties), d["name"]


class Server:
    """A `prefect server` on 127.0.0.1 with the cpu and gpu process pools and every deployment of prefect.yaml."""

    def __init__(self, home: Path):
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(home / "prefect_home"), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
        self.logs = home / "logs"
        self.logs.mkdir()
        self.processes = [self._start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))]
        _wait(lambda: httpx.get(f"{self.api}/health", timeout=2).json() is True, 120, "prefect server")
        for pool in ("cpu", "gpu"):  # the README's recipe
            self.prefect("work-pool", "create", pool, "--type", "process")
        self.prefect("deploy", "--all")
        self.deployments = {d["name"]: d for d in self.call("POST", "/deployments/filter", {}).json()}

    def _start(self, log: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([PREFECT, *args], cwd=ROOT, env={**self.env, **(env or {})}, start_new_session=True,
                                stdout=open(self.logs / f"{log}.log", "w"), stderr=subprocess.STDOUT)

    def prefect(self, *args, timeout=120):
        done = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def call(self, method: str, path: str, body: dict | None = None, attempts: int = 8) -> httpx.Response:
        """One API request, retried while the server answers 429/502/503 (SQLite busy under a worker's writes),
        as Prefect's own client does."""
        for attempt in range(attempts):
            reply = httpx.request(method, f"{self.api}{path}", json=body, timeout=30)
            if reply.status_code not in (429, 502, 503):
                return reply
            time.sleep(min(2 ** attempt, 15))
        return reply

    def worker(self, pool: str, env: dict | None = None) -> None:
        self.processes.append(self._start(f"worker-{pool}", "worker", "start", "--pool", pool, "--type", "process", env=env))

    def runs(self, deployment: str) -> list[dict]:
        query = {"flow_runs": {"deployment_id": {"any_": [self.deployments[deployment]["id"]]}}}
        return self.call("POST", "/flow_runs/filter", query).json()

    def trigger(self, deployment: str, parameters: dict, scheduled: str) -> str:
        """A flow run of `deployment` scheduled at `scheduled`, as the scheduler makes one; returns its id."""
        body = {"parameters": parameters, "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": scheduled}}}
        reply = self.call("POST", f"/deployments/{self.deployments[deployment]['id']}/create_flow_run", body)
        assert reply.status_code == 201, reply.text
        return reply.json()["id"]

    def wait_completed(self, run_id: str, seconds: float) -> None:
        def finished():
            state = self.call("GET", f"/flow_runs/{run_id}").json()["state"]["type"]
            logs = "".join(p.read_text()[-3000:] for p in sorted(self.logs.glob("worker-*.log")))
            assert state not in ("FAILED", "CRASHED", "CANCELLED"), logs
            return state == "COMPLETED"

        _wait(finished, seconds, f"flow run {run_id}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            os.killpg(process.pid, signal.SIGINT)  # a worker stops on SIGINT, not SIGTERM
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("prefect"))
    yield started
    started.stop()


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.real_llm
@pytest.mark.vllm
def test_deployments_on_a_prefect_server_with_a_process_worker(server, tmp_path):
    assert sorted(server.deployments) == ["cpu-smoke", "nightly-gpu", "publish-manual", "recipe-manual"]
    assert server.deployments["nightly-gpu"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    out = tmp_path / "smoke"
    server.prefect("deployment", "run", "end-to-end/cpu-smoke", "--params", json.dumps({"out": str(out), "n": 6, "curate": {"k": 3}}))
    server.worker("cpu")
    server.wait_completed(server.runs("cpu-smoke")[0]["id"], 540)
    # the scheduler (which SQLAlchemy 2.1 breaks) has created the nightly deployment's cron runs
    _wait(lambda: any(r["state"]["type"] == "SCHEDULED" for r in server.runs("nightly-gpu")), 120, "the scheduler")
    scheduled = [r for r in server.runs("nightly-gpu") if r["state"]["type"] == "SCHEDULED"]
    assert scheduled and all(r["expected_start_time"].endswith("T02:00:00Z") for r in scheduled)
    exported = pl.read_parquet(out / "export" / "data.parquet")
    assert 0 < exported.height <= 3
    stages = [json.loads(line)["stage"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {"instructions", "responses", "scored", "selected", "export"} <= set(stages)
    assert (out / "export" / "README.md").exists() and (out / "report" / "index.html").exists()

    # the recipe deployment runs a user's recipe file through the same worker
    recipe = tmp_path / "my-recipe.yaml"
    recipe.write_text(yaml.safe_dump({"plan": {"n": 4, "seed": 3}, "engine": "fake",
                                      "engines": {"fake": {"backend": "fake", "model": "m"}},
                                      "steps": [{"stage": "magpie.synthesize", "params": {"max_tokens": 16}}]}))
    server.prefect("deployment", "run", "recipe/recipe-manual", "--params",
                   json.dumps({"out": str(tmp_path / "recipe"), "recipe": str(recipe)}))
    server.wait_completed(server.runs("recipe-manual")[0]["id"], 300)
    assert pl.read_parquet(tmp_path / "recipe" / "export" / "data.parquet").height == 4


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.real_llm
def test_the_nightly_deployment_makes_a_new_night_per_scheduled_date_and_grows_one_corpus(server, tmp_path):
    from fakehub import FakeHub
    from huggingface_hub import DatasetCard

    from pipeline.score.embed import encode, texts
    from pipeline.select.selection import normalized_text

    runs, corpus = tmp_path / "nightly", tmp_path / "corpus"
    # the nightly deployment as prefect.yaml defines it, on SmolLM2 with llama.cpp on this CPU, small
    night = {"runs": str(runs), "corpus": str(corpus), "corpus_repo_id": "tester/nightly", "n": 8, "scorer": None, "replicas": 1,
             "engine": {"backend": "llamacpp", "model": "smollm2"}, "curate": {"k": 4},
             "synthesize": {"response_max_tokens": 256, "response_temperature": 0.6, "response_top_p": 0.9, "shard_size": 4}}
    token = "hf_NIGHTLYtokenForTheLoopbackHub01"
    with FakeHub(tmp_path / "hub", tokens={token}) as hub:
        server.worker("gpu", env={"HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1",
                                  "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"})  # online to the loopback Hub only
        for date in ("2026-11-28", "2026-11-29"):
            server.wait_completed(server.trigger("nightly-gpu", night, f"{date}T02:00:00+00:00"), 300)
        manifest = (runs / "2026-11-28" / "manifest.jsonl").read_text()
        server.wait_completed(server.trigger("nightly-gpu", night, "2026-11-28T02:00:00+00:00"), 300)  # again
        commits = hub.repos["datasets/tester/nightly"]["commits"]
        pushed_card = hub.repos["datasets/tester/nightly"]["files"]["README.md"]

    first, second = (json.loads((runs / d / "run.json").read_text()) for d in ("2026-11-28", "2026-11-29"))
    assert first["seed"] != second["seed"] and first["scheduled"].startswith("2026-11-28T02:00")
    shards = lambda text: [line for line in text.splitlines() if '"status": "done"' in line]  # noqa: E731
    assert shards((runs / "2026-11-28" / "manifest.jsonl").read_text()) == shards(manifest)  # the third run redid nothing
    log = [json.loads(line) for line in (corpus / "corpus.jsonl").read_text().splitlines()]
    assert [e["run_info"]["run"] for e in log] == ["2026-11-28", "2026-11-29"]
    nights = [pl.read_parquet(runs / d / "export" / "data.parquet") for d in ("2026-11-28", "2026-11-29")]
    added = [pl.read_parquet(corpus / "data" / f"part-0000{i}.parquet") for i in range(2)]
    assert added[0]["id"].to_list() == nights[0]["id"].to_list()  # the first night is all new
    assert 0 < added[1].height <= nights[1].height and log[1]["rows_added"] == added[1].height
    # none of the second night's additions duplicates a row of the first night, by text or by meaning
    assert set(normalized_text(added[1])).isdisjoint(normalized_text(added[0]))
    similarity = encode(texts(added[1], "instruction")) @ encode(texts(added[0], "instruction")).T
    assert similarity.max() < 0.95
    # one Hub commit per addition, the second with the cumulative card
    assert [c["summary"] for c in commits] == [
        f"aligndata corpus: addition {i} (+{added[i].height} rows, from {d})" for i, d in enumerate(("2026-11-28", "2026-11-29"))]
    assert pushed_card == (corpus / "README.md").read_bytes()
    assert "| 1 | 2026-11-29 |" in pushed_card.decode() and DatasetCard(pushed_card.decode()).data.pretty_name


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
