"""`aligndata publish` end to end: the real huggingface_hub client, in a subprocess, against a loopback Hub
(tests/fakehub.py) on 127.0.0.1. What arrives is checked byte for byte; the token appears in no output or file."""
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from huggingface_hub import DatasetCard

from fakehub import FakeHub
from pipeline.engines import EngineSpec
from pipeline.recipes import magpie_job

GOOD = "hf_GOODtokenForTheLoopbackHub0123"
BAD = "hf_BADtokenTheHubRefuses456789abc"
REPO = "datasets/tester/magpie-demo"


@pytest.fixture
def run_dir(tmp_path):
    spec = EngineSpec.make("fake", "fake-model", options={"script": {"<|im_start|>assistant\n": "An answer."}})
    magpie_job(tmp_path / "run", n=6, seed=0, engine=spec, shard_size=3)
    return tmp_path / "run"


def publish(run_dir: Path, hub: FakeHub, token: str | None, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env |= {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", **({"HF_TOKEN": token} if token else {})}
    aligndata = Path(sys.executable).with_name("aligndata")
    return subprocess.run([str(aligndata), "publish", str(run_dir), "--repo", "tester/magpie-demo", *extra],
                          env=env, capture_output=True, text=True, timeout=120)


def test_publish_to_a_loopback_hub(run_dir, tmp_path):
    with FakeHub(tmp_path / "hub", tokens={GOOD}) as hub:
        first = publish(run_dir, hub, GOOD, "--message", "first export")
        assert first.returncode == 0, first.stderr
        state = hub.repos[REPO]
        assert [c["summary"] for c in state["commits"]] == ["first export"]
        expected = {"data/train-00000-of-00001.parquet": run_dir / "export" / "data.parquet",
                    "README.md": run_dir / "export" / "README.md", "manifest.jsonl": run_dir / "manifest.jsonl"}
        assert set(state["files"]) == set(expected)
        for path, local in expected.items():
            assert state["files"][path] == local.read_bytes(), path
            assert (tmp_path / "hub" / REPO / path).read_bytes() == local.read_bytes()
        card = DatasetCard(state["files"]["README.md"].decode()).data.to_dict()
        assert card["configs"][0]["data_files"][0]["path"] == "data/*.parquet" and card["task_categories"] == ["text-generation"]
        # the data file is where the card's config says, readable by `datasets`
        from datasets import load_dataset
        pushed = load_dataset("parquet", data_files=str(tmp_path / "hub" / REPO / "data" / "*.parquet"), split="train")
        assert pushed.num_rows == pl.read_parquet(expected["data/train-00000-of-00001.parquet"]).height
        assert any(method == "PUT" and path.startswith("/lfs-upload/") for method, path in hub.requests)  # Parquet via LFS

        # the same export again: no new commit
        again = publish(run_dir, hub, GOOD)
        assert again.returncode == 0, again.stderr
        assert len(state["commits"]) == 1

        # a changed card: one more commit holding only that file
        (run_dir / "export" / "README.md").write_text((run_dir / "export" / "README.md").read_text() + "\nUpdated.\n")
        assert publish(run_dir, hub, GOOD).returncode == 0
        assert len(state["commits"]) == 2 and state["commits"][1]["files"] == ["README.md"]

        # re-sharded: the data arrives as several files and the earlier single file is deleted, so no row is doubled
        size = (run_dir / "export" / "data.parquet").stat().st_size
        assert publish(run_dir, hub, GOOD, "--max-shard-mb", str((size / 3 + 16) / 2**20)).returncode == 0
        shards = sorted(p for p in state["files"] if p.startswith("data/"))
        assert shards == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
        assert state["commits"][-1]["deleted"] == ["data/train-00000-of-00001.parquet"]
        rows = pl.concat([pl.read_parquet(tmp_path / "hub" / REPO / p) for p in shards])
        assert rows.equals(pl.read_parquet(run_dir / "export" / "data.parquet"))

        # a refused token and a missing one: clear errors, no commit, the token nowhere
        commits_before = len(state["commits"])
        refused = publish(run_dir, hub, BAD)
        assert refused.returncode == 2 and "refused the token in HF_TOKEN (HTTP 401)" in refused.stderr
        missing = publish(run_dir, hub, None)
        assert missing.returncode == 2 and "set the environment variable HF_TOKEN" in missing.stderr
        assert len(state["commits"]) == commits_before

    outputs = first.stdout + first.stderr + again.stdout + again.stderr + refused.stdout + refused.stderr
    assert GOOD not in outputs and BAD not in outputs
    assert [str(p) for p in run_dir.rglob("*") if p.is_file() and (GOOD.encode() in p.read_bytes())] == []
    record = yaml.safe_load((run_dir / "publish.json").read_text())
    assert record["repo_id"] == "tester/magpie-demo" and record["endpoint"] == hub.url


def test_publish_without_an_export_says_what_to_run(tmp_path):
    from pipeline.ship.publish import PublishError, files

    with pytest.raises(PublishError, match="aligndata run --out"):
        files(tmp_path)


FLOW_RUN = """
import sys
sys.path.insert(0, {root!r})
from flows.end_to_end import end_to_end_flow
engine = {{"backend": "fake", "model": "flow-model", "options": {{"script": {{"<|im_start|>assistant\\n": "An answer."}}}}}}
curate = {{"k": 3, "dedup": ["exact"], "shard_size": 4,
          "quality_filters": [{{"name": "instruction_words_at_least", "min_words": 2}}]}}
end_to_end_flow(out={out!r}, n=8, seed=0, engine=engine, synthesize={{"shard_size": 4}}, curate=curate,
                repo_id="tester/magpie-demo")
"""


@pytest.mark.slow
def test_a_cached_rerun_of_the_flow_with_a_repo_makes_no_new_commit(tmp_path):
    """`aligndata run --repo` twice (the end-to-end flow, as a Prefect retry or a nightly re-run would run it): the
    second run is served from the cache, rewrites no export, appends nothing to the manifest and pushes no commit."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    out = tmp_path / "run"
    with FakeHub(tmp_path / "hub", tokens={GOOD}) as hub:
        env |= {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": GOOD, "PREFECT_HOME": str(tmp_path / "ph")}
        script = FLOW_RUN.format(root=str(root), out=str(out))
        for attempt in range(2):
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            if attempt == 0:
                manifest = (out / "manifest.jsonl").read_bytes()
                export = (out / "export" / "data.parquet").stat().st_mtime_ns
        assert len(hub.repos[REPO]["commits"]) == 1
        assert (out / "manifest.jsonl").read_bytes() == manifest
        assert (out / "export" / "data.parquet").stat().st_mtime_ns == export
