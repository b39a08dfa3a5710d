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
