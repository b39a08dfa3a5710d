import polars as pl
import pytest

from pipeline.synth import magpie
from pipeline.engines import EngineSpec, load_engine
from pipeline.core.rundir import read_manifest, read_shards
from pipeline.core.rundir import summarize
from pipeline.recipes import magpie_job
from pipeline.core.rundir import StageMismatch
from pipeline.recipes.runner import EngineFailures, run_stage


def test_magpie_job_on_fake_engine_writes_shards_manifest_and_export(tmp_path):
    spec = EngineSpec.make("fake", "fake-model", options={"script": {"<|im_start|>assistant\n": "A full answer."}})
    summary = magpie_job(tmp_path, n=10, seed=0, engine=spec, shard_size=4, turns=2)
    assert sorted(p.name for p in (tmp_path / "instructions").glob("shard-*")) == [f"shard-0000{i}.parquet" for i in range(3)]
    assert summary["stages"]["instructions"]["rows_in"] == 10
    df = pl.read_parquet(summary["export"])
    assert df.height == summary["stages"]["filtered"]["rows_out"] > 0
    assert all(len(m) == 4 for m in df["messages"].to_list())


def test_another_n_or_seed_on_an_existing_run_is_refused(tmp_path):
    spec = EngineSpec.make("fake", "plan-model", options={"script": {"<|im_start|>assistant\n": "A full answer."}})
    magpie_job(tmp_path, n=4, seed=0, engine=spec, shard_size=4)
    magpie_job(tmp_path, n=4, seed=0, engine=spec, shard_size=4)  # the same run resumes
    for n, seed, changed in ((5, 0, "n"), (4, 1, "seed")):
        with pytest.raises(StageMismatch, match=f"plan was made with different \\['{changed}'\\]; use a new --out"):
            magpie_job(tmp_path, n=n, seed=seed, engine=spec, shard_size=4)


def test_resume_skips_finished_shards(tmp_path):
    spec = EngineSpec.make("fake", "resume-model")
    engine = load_engine(spec)
    run_stage(tmp_path, "instructions", magpie.synthesize, source=magpie.plan(8, seed=0), engine=spec, shard_size=4)
    first = read_shards(tmp_path / "instructions")
    (tmp_path / "instructions" / "shard-00001.parquet").unlink()  # as if the run died in shard 1
    calls = len(engine.calls)
    run_stage(tmp_path, "instructions", magpie.synthesize, source=magpie.plan(8, seed=0), engine=spec, shard_size=4)
    assert len(engine.calls) == calls + 1  # only the missing shard was recomputed
    assert read_shards(tmp_path / "instructions").equals(first)  # and it reproduced the same rows


def test_failure_rate_stops_with_a_message_and_keeps_finished_shards(tmp_path):
    ok = EngineSpec.make("fake", "m")
    run_stage(tmp_path, "s", magpie.synthesize, source=magpie.plan(4, seed=0), engine=ok, shard_size=4)
    broken = EngineSpec.make("fake", "m2", options={"fail_every": 1})
    with pytest.raises(EngineFailures, match=r"4 of 4 rows failed in the engine .*engine_error:http_503.*run the same command again"):
        run_stage(tmp_path, "t", magpie.synthesize, source=magpie.plan(4, seed=0), engine=broken, shard_size=4)
    assert (tmp_path / "s" / "shard-00000.parquet").exists() and not (tmp_path / "t" / "shard-00000.parquet").exists()
    assert read_manifest(tmp_path)[-1]["status"] == "failed"


def test_failures_under_the_rate_are_counted_and_kept_aside(tmp_path):
    spec = EngineSpec.make("fake", "m3", options={"fail_every": 4})
    run_stage(tmp_path, "s", magpie.synthesize, source=magpie.plan(8, seed=0), engine=spec, shard_size=8,
              max_failure_rate=0.5)
    assert summarize(tmp_path)["stages"]["s"]["drops"] == {"engine_error:http_503": 2}
    assert read_shards(tmp_path / "s", "dropped-*.parquet").height == 2
    assert read_shards(tmp_path / "s").height == 6


def test_changed_parameters_are_refused(tmp_path):
    spec = EngineSpec.make("fake", "m")
    run_stage(tmp_path, "s", magpie.synthesize, source=magpie.plan(2, seed=0), engine=spec, params={"max_tokens": 5})
    with pytest.raises(StageMismatch, match="different \\['params'\\]"):
        run_stage(tmp_path, "s", magpie.synthesize, source=magpie.plan(2, seed=0), engine=spec, params={"max_tokens": 6})


def test_run_step_frees_engines_the_step_does_not_use(tmp_path, monkeypatch):
    from pipeline import recipes
    from pipeline.engines import EngineSpec
    from pipeline.recipes import steps as steps_module

    kept = []
    monkeypatch.setattr(steps_module, "release_engines", lambda keep: kept.append(keep))
    monkeypatch.setattr(steps_module, "run_stage", lambda *args, **kwargs: tmp_path)  # only the release is under test
    judge, target = EngineSpec.make("vllm", "judge"), EngineSpec.make("vllm", "target")
    recipes.run_step(tmp_path, recipes.Step("judged", "pipeline.score.deita:score", engines={"target": target.to_json()}), tmp_path, engine=judge)
    assert kept == [{judge.to_json(), target.to_json()}]  # the step's engine and its engines by role
    recipes.run_step(tmp_path, recipes.Step("plain", "pipeline.score.deita:score", uses_engine=False), tmp_path, engine=judge)
    recipes.run_step(tmp_path, recipes.Step("cpu", "pipeline.score.deita:score", engines={"target": target.to_json()}), tmp_path,
                  engine=EngineSpec.make("fake", "cpu"))
    assert len(kept) == 1  # a step without an engine, or not on vLLM, frees nothing


def _warning_stage(df, note):
    import warnings

    from pipeline.core.rundir import StageWarning

    warnings.warn(note, StageWarning)
    return df


def test_a_stage_warning_goes_to_the_manifest_line(tmp_path):
    run_stage(tmp_path, "warned", _warning_stage, source=magpie.plan(2, seed=0), params={"note": "registry disagrees"})
    [entry] = read_manifest(tmp_path)
    assert entry["warnings"] == ["registry disagrees"]


def test_an_engine_stage_is_one_engine_call_across_shards_and_rows_do_not_change(tmp_path):
    """Shards are for durability: with batch_rows 10 the 3 pending shards (4 + 4 + 2 rows) go to the engine as one
    call of 10, are written as 3 shards with their own manifest lines, and equal a shard-at-a-time run."""
    one_by_one = EngineSpec.make("fake", "window-model")
    windowed = EngineSpec.make("fake", "window-model", options={"batch_rows": 10})
    run_stage(tmp_path / "a", "instructions", magpie.synthesize, source=magpie.plan(10, seed=0), engine=one_by_one, shard_size=4)
    engine = load_engine(windowed)
    run_stage(tmp_path / "b", "instructions", magpie.synthesize, source=magpie.plan(10, seed=0), engine=windowed, shard_size=4)
    assert [n for n, _ in engine.calls] == [10]
    assert sorted(p.name for p in (tmp_path / "b" / "instructions").glob("shard-*")) == [f"shard-0000{i}.parquet" for i in range(3)]
    assert [e["rows_in"] for e in read_manifest(tmp_path / "b")] == [4, 4, 2]
    assert read_shards(tmp_path / "b" / "instructions").drop("meta").equals(read_shards(tmp_path / "a" / "instructions").drop("meta"))
    # resume: only the unfinished shards are sent, still together
    for index in (0, 2):
        (tmp_path / "b" / "instructions" / f"shard-0000{index}.parquet").unlink()
    run_stage(tmp_path / "b", "instructions", magpie.synthesize, source=magpie.plan(10, seed=0), engine=windowed, shard_size=4)
    assert [n for n, _ in engine.calls] == [10, 4, 2]  # shard 1 was finished: two windows around it


def echo(df, *, engine):
    """A test stage: one request per row, its prompt the row's id."""
    from pipeline.engines import Sampling, failure_reason

    replies = engine.generate(df["id"].to_list(), Sampling(max_tokens=4))
    return df.with_columns(pl.Series("drop_reason", [failure_reason(r) for r in replies], dtype=pl.String))


def test_a_failing_shard_in_a_window_keeps_the_shards_before_it(tmp_path):
    plan = magpie.plan(12, seed=0)
    spec = EngineSpec.make("fake", "m", options={"batch_rows": 12, "fail_on": plan["id"][4:8].to_list()})  # shard 1
    with pytest.raises(EngineFailures, match="shard 1: 4 of 4 rows failed"):
        run_stage(tmp_path, "s", echo, source=plan, engine=spec, shard_size=4)
    assert [p.name for p in sorted((tmp_path / "s").glob("shard-*"))] == ["shard-00000.parquet"]  # shard 2 was in flight
    assert [(e["shard"], e["status"]) for e in read_manifest(tmp_path)] == [(0, "done"), (1, "failed")]


def test_a_stage_that_builds_new_rows_is_split_by_id_or_parent_id(tmp_path):
    from pipeline.recipes.runner import _shard_of_rows

    tagged = pl.DataFrame({"id": ["a", "b", "c"], "_shard": [0, 0, 1]})
    out = pl.DataFrame({"id": ["a", "x"], "parent_id": [None, "c"]})
    assert _shard_of_rows(tagged, out, [0, 1])["_shard"].to_list() == [0, 1]
    assert _shard_of_rows(tagged, pl.DataFrame({"id": ["new"]}), [0, 1]) is None


def test_a_stage_that_cannot_use_replicas_says_so_and_runs_here(tmp_path, caplog):
    """A stage with per-shard state (MCTS trees) runs in this process under --replicas, and says so on the console
    (the aligndata logger) and in the manifest."""
    import logging

    from pipeline.core.rundir import read_manifest
    from pipeline.recipes.replicas import replicas

    def stateful(df, *, engine, checkpoint):
        return df

    with caplog.at_level(logging.WARNING, logger="aligndata"), replicas(4, address="local"):
        run_stage(tmp_path, "trees", stateful, source=magpie.plan(3, seed=0), engine=EngineSpec.make("fake", "m"), shard_size=2)
    message = "this stage keeps resumable state inside each shard, so it runs in this process, not on the 4 replicas"
    assert [r.getMessage() for r in caplog.records] == [f"trees: {message}"]
    assert [e["message"] for e in read_manifest(tmp_path) if e.get("event") == "replicas_unused"] == [message]
