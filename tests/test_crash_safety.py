"""Off the happy path of writing a run directory: a process killed at every point of a shard's write sequence, then
resumed, leaves every row exactly once; the manifest's torn lines; one writer per run directory; a full disk."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.core import rundir
from pipeline.core.records import RecordError
from pipeline.engines import EngineSpec
from pipeline.core.rundir import read_manifest, read_shards, summarize
from pipeline.recipes.runner import run_stage
from pipeline.synth import magpie

ROOT = Path(__file__).resolve().parent.parent
STAGE = '''
import os
import polars as pl

def mark(df, *, every):
    """Drops every `every`-th row, unless the file named by CRASH_NO_DROPS exists (a retry then has no drops)."""
    if os.path.exists(os.environ.get("CRASH_NO_DROPS", "/nonexistent")):
        return df
    return df.with_columns(pl.when(pl.int_range(pl.len()) % every == 0).then(pl.lit("odd_one")).otherwise(None).alias("drop_reason"))
'''
# What a shard's finishing does, in order (rundir's write order); the child dies at one of them in shard 1.
POINTS = ["dropped-renamed", "manifest-line", "shard-renamed"]
CHILD = '''
import os, sys
sys.path[:0] = [{root!r}, {mods!r}]
import crash_stage
import polars as pl
from pipeline.core import rundir
from pipeline.recipes import runner
from pipeline.synth import magpie

point, events = {point!r}, []
real_replace, real_append = os.replace, runner.append_manifest

def replace(src, dst):
    real_replace(src, dst)
    name = os.path.basename(dst)
    event = "dropped-renamed" if name.startswith("dropped-00001") else "shard-renamed" if name.startswith("shard-00001") else None
    if event == point:
        os._exit(9)

def append(run_dir, entry):
    real_append(run_dir, entry)
    if entry.get("shard") == 1 and entry.get("status") == "done" and point == "manifest-line":
        os._exit(9)

os.replace, runner.append_manifest = replace, append
runner.run_stage({out!r}, "marked", crash_stage.mark, source=magpie.plan(12, seed=0), params={{"every": 3}},
                 shard_size=4)
'''


@pytest.fixture
def stage_module(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "crash_stage.py").write_text(STAGE)
    monkeypatch.syspath_prepend(str(mods))
    import importlib

    import crash_stage

    return importlib.reload(crash_stage), mods


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_point_of_a_shards_write_then_a_resume_gives_every_row_once(tmp_path, stage_module, point,
                                                                                    monkeypatch):
    module, mods = stage_module
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), mods=str(mods), point=point, out=str(out))],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 9, child.stderr[-2000:]  # it died where it was told to
    assert (out / "marked" / "shard-00001.parquet").exists() == (point == "shard-renamed")
    (tmp_path / "no-drops").touch()  # the retry drops nothing: a stale dropped file would now duplicate rows
    monkeypatch.setenv("CRASH_NO_DROPS", str(tmp_path / "no-drops"))
    run_stage(out, "marked", module.mark, source=magpie.plan(12, seed=0), params={"every": 3}, shard_size=4)
    kept, dropped = read_shards(out / "marked"), read_shards(out / "marked", "dropped-*.parquet")
    ids = kept["id"].to_list() + dropped["id"].to_list()
    assert sorted(ids) == sorted(magpie.plan(12, seed=0)["id"].to_list())  # every row exactly once
    assert not list((out / "marked").glob(".*.tmp"))
    stage = summarize(out)["stages"]["marked"]
    assert stage["rows_in"] == 12 and stage["rows_out"] == kept.height  # the funnel counts what is on disk
    assert sum(stage["drops"].values()) == dropped.height


def test_a_torn_last_manifest_line_is_skipped_and_cut_before_the_next_append(tmp_path):
    rundir.append_manifest(tmp_path, {"stage": "a", "n": 1})
    with open(tmp_path / rundir.MANIFEST, "a") as handle:
        handle.write('{"stage": "b", "n"')  # a crash mid-write
    assert [e["stage"] for e in read_manifest(tmp_path)] == ["a"]
    rundir.append_manifest(tmp_path, {"stage": "c", "n": 3})
    assert [e["stage"] for e in read_manifest(tmp_path)] == ["a", "c"]
    assert (tmp_path / rundir.MANIFEST).read_text().count("\n") == 2  # nothing glued onto the torn line
    with open(tmp_path / rundir.MANIFEST, "a") as handle:
        handle.write("not json\n")
    rundir.append_manifest(tmp_path, {"stage": "d"})
    with pytest.raises(RecordError, match=r"manifest.jsonl: line 3 is not a JSON line"):
        read_manifest(tmp_path)  # a broken line before the end is damage, not a crash


def test_a_second_writer_is_refused_naming_the_first_and_waits_with_wait(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.core.rundir import writer_lock
        with writer_lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(3)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(rundir.RunDirBusy, match=rf"is being written by pid {holder.pid} on {os.uname().nodename} "):
        with rundir.writer_lock(tmp_path):
            pass
    waited = []
    started = time.perf_counter()
    with rundir.writer_lock(tmp_path, wait=True, on_wait=waited.append):
        assert time.perf_counter() - started > 0.5 and waited and "waiting for it to finish" in waited[0]
    holder.wait()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.core.rundir import writer_lock
        with writer_lock({str(tmp_path)!r}):
            os._exit(9)
        """)])
    assert holder.wait() == 9
    with rundir.writer_lock(tmp_path):  # a dead holder's lock is taken over
        with rundir.writer_lock(tmp_path):  # and it is re-entrant in one process (a flow and its subflows)
            pass


@pytest.mark.real_llm
def test_two_commands_on_one_out_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pipeline.cli", "magpie", "--engine", "llamacpp", "--n", "4", "--out", str(out),
               "--instruction-max-tokens", "32", "--response-max-tokens", "32"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / rundir.LOCK).exists():
            time.sleep(0.05)
        time.sleep(0.5)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"is being written by pid {first.pid}" in " ".join(second.stderr.split())
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def small_disk(tmp_path):
    """A 600 KB tmpfs (root can mount one here), or None where the platform refuses."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    return mount if done.returncode == 0 else None


def test_a_full_disk_stops_with_one_line_keeps_finished_shards_and_resumes_after_space_is_freed(tmp_path, monkeypatch):
    disk = small_disk(tmp_path)
    try:
        out = (disk or tmp_path) / "run"
        plan = magpie.plan(64, seed=0)
        if disk is not None:
            filler = disk / "filler"
            filler.write_bytes(b"\0" * (600 * 1024 - 96 * 1024))  # ~96 KB left: a few shards fit
        else:  # no tmpfs here: the disk is full from the fifth file written on
            real, calls = rundir.os.replace, []

            def replace(src, dst):
                calls.append(dst)
                if len(calls) > 4:
                    raise OSError(28, "No space left on device", str(dst))
                real(src, dst)

            monkeypatch.setattr(rundir.os, "replace", replace)
        engine = EngineSpec.make("fake", "disk-model")
        with pytest.raises(rundir.WriteError, match=rf"cannot write in {out}.*No space left on device; free space on that "
                                                    "disk.*run the same command again: finished shards are kept"):
            run_stage(out, "instructions", magpie.synthesize, source=plan, shard_size=4, engine=engine)
        finished = sorted((out / "instructions").glob("shard-*.parquet"))
        assert finished and all(pl.read_parquet(p).height == 4 for p in finished)  # each readable and whole
        assert not list((out / "instructions").glob(".*.tmp"))
        if disk is not None:
            filler.unlink()
        else:
            monkeypatch.setattr(rundir.os, "replace", real)
        run_stage(out, "instructions", magpie.synthesize, source=plan, shard_size=4, engine=engine)
        assert read_shards(out / "instructions")["id"].to_list() == plan["id"].to_list()
    finally:
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], check=False)  # lazily: a reader may still hold a file


def test_a_full_disk_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    from pipeline.cli.commands import app

    disk = small_disk(tmp_path)
    if disk is None:
        pytest.skip("mounting a tmpfs needs root; the library-level test simulates ENOSPC instead")
    try:
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps({"instruction": f"Question {i} " + "word " * 200, "output": "answer " * 200})
                                + "\n" for i in range(400)))
        (disk / "filler").write_bytes(b"\0" * (600 * 1024 - 40 * 1024))
        result = CliRunner().invoke(app, ["magpie-filter", "--input", str(data), "--out", str(disk / "run")])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        message = " ".join(result.output.split())
        assert f"cannot write in {disk / 'run'}" in message and "No space left on device" in message
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # lazily: a reader may still hold a file
