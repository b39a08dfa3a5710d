"""A run killed with SIGKILL mid-stage and started again finishes with every row exactly once, and does not
recompute the shards it had finished (the manifest shows one completion per shard)."""
import collections
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from pipeline.core.rundir import read_shards

pytestmark = pytest.mark.real_llm
MAGPIE = ["pipeline.cli", "magpie", "--engine", "llamacpp", "--n", "12", "--seed", "5", "--shard-size", "2",
          "--response-max-tokens", "48", "--response-temperature", "0.6"]
END_TO_END = ["flows.cli", "run", "--engine", "llamacpp", "--n", "8", "--seed", "5", "--k", "4", "--shard-size", "4"]  # 2 response shards


@pytest.mark.parametrize("args, kill_after, shards", [(MAGPIE, 2, 6), pytest.param(END_TO_END, 1, 2, marks=pytest.mark.slow)],
                         ids=["aligndata-magpie", "aligndata-run-flow"])
def test_sigkill_mid_stage_then_resume(tmp_path, args, kill_after, shards):
    out = tmp_path / "run"
    command = [sys.executable, "-m", *args, "--out", str(out)]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home")}
    # its own process group: the kill takes its children too (the flow's ephemeral Prefect server), like a lost machine
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "responses").glob("shard-*.parquet"))) < kill_after:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # in the middle of the responses stage
    process.wait()
    finished_before = {p.name for p in (out / "responses").glob("shard-*.parquet")}
    assert kill_after <= len(finished_before) < shards
    assert not list((out / "responses").glob(".*.tmp"))  # a killed write leaves no half shard under a real name
    before = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]

    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, env=env)

    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    done = collections.Counter((e["stage"], e["shard"]) for e in entries if e.get("status") == "done")
    assert all(n == 1 for n in done.values()), "a finished shard was computed twice"
    assert entries[:len(before)] == before
    responses = read_shards(out / "responses")
    instructions = read_shards(out / "instructions-filtered")
    assert responses["id"].n_unique() == responses.height == instructions.height  # every row exactly once
    assert read_shards(out / "instructions")["id"].n_unique() == int(args[args.index("--n") + 1])
    exported = pl.read_parquet(out / "export" / "data.parquet")
    assert exported["id"].n_unique() == exported.height
