"""A stage's identity and cache key follow its code: editing one stage's module recomputes that stage and the
ones after it, and nothing before it."""
import importlib
import sys
import textwrap

import pytest

from pipeline.core import codehash
from pipeline.core.rundir import StageMismatch, read_manifest, read_shards
from pipeline.engines.models import SMOLLM2_SHA256, model_revision
from pipeline.recipes import Step, run_steps
from pipeline.synth import magpie

STAGE = """
import polars as pl

def transform(df):
    return df.with_columns(pl.col("source") + "{suffix}")
"""


def _write_stages(folder, suffixes: dict) -> None:
    for name, suffix in suffixes.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(STAGE.format(suffix=suffix)))
    importlib.invalidate_caches()
    for name in suffixes:
        sys.modules.pop(name, None)
    for cached in (codehash._module_file, codehash.module_closure, codehash._module_digest):
        cached.cache_clear()


@pytest.fixture
def stage_modules(tmp_path, monkeypatch):
    folder = tmp_path / "code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    _write_stages(folder, {"stage_a": "-a", "stage_b": "-b", "stage_c": "-c"})
    yield folder
    for name in ("stage_a", "stage_b", "stage_c"):
        sys.modules.pop(name, None)


def _steps():
    return [Step(name, f"{name}:transform", uses_engine=False, shard_size=2) for name in ("stage_a", "stage_b", "stage_c")]


def _shard_lines(run_dir):
    return [e["stage"] for e in read_manifest(run_dir) if e.get("status") == "done"]


def test_editing_a_stage_recomputes_it_and_the_stages_after_it_only(stage_modules, tmp_path):
    from flows.tasks import _step_identity

    run_dir, plan = tmp_path / "run", magpie.plan(4, seed=0)
    last = run_steps(run_dir, _steps(), plan, engine=None)
    assert set(read_shards(last)["source"]) == {"magpie-a-b-c"}
    keys = {s.name: _step_identity(None, {"step": vars(s), "source": str(run_dir), "engine": None}) for s in _steps()}

    _write_stages(stage_modules, {"stage_b": "-B"})  # an upgrade changes stage_b's behaviour
    new_keys = {s.name: _step_identity(None, {"step": vars(s), "source": str(run_dir), "engine": None}) for s in _steps()}
    assert new_keys["stage_a"] == keys["stage_a"] and new_keys["stage_c"] == keys["stage_c"]
    assert new_keys["stage_b"] != keys["stage_b"]  # the flow cache recomputes stage_b (stage_c: its input changes)

    with pytest.raises(StageMismatch, match=r"stage_b was made with different \['code'\]"):
        run_steps(run_dir, _steps(), plan, engine=None)  # old and new shards are never mixed in one directory
    before = len(_shard_lines(run_dir))
    for name in ("stage_b", "stage_c"):  # what the refusal says to do
        for path in sorted((run_dir / name).iterdir(), reverse=True):
            path.unlink()
        (run_dir / name).rmdir()
    last = run_steps(run_dir, _steps(), plan, engine=None)
    assert set(read_shards(last)["source"]) == {"magpie-a-B-c"}
    assert _shard_lines(run_dir)[before:] == ["stage_b", "stage_b", "stage_c", "stage_c"]  # stage_a was not redone


def test_code_hash_follows_project_imports_and_ignores_unrelated_modules():
    closure = codehash.module_closure("pipeline.synth.magpie")
    assert {"pipeline.synth.magpie", "pipeline.synth.magpie_sanitizer", "pipeline.core.records",
            "pipeline.engines.templates"} <= set(closure)
    assert not {"pipeline.cli.commands", "pipeline.ship.report", "pipeline.score.deita"} & set(closure)
    assert codehash.code_hash(magpie.synthesize) == codehash.code_hash(magpie.respond)  # one module, one hash
    assert codehash.code_hash(magpie.synthesize) != codehash.code_hash(importlib.import_module("pipeline.score.deita").score)


def test_model_revision_identifies_the_weights(tmp_path):
    assert model_revision("vllm", "smollm2") == SMOLLM2_SHA256[:16]
    assert model_revision("openai", "gpt-x") is None  # a server's model name says nothing about its weights
    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 1000)
    first = model_revision("vllm", str(checkpoint))
    (checkpoint / "model.safetensors").write_bytes(b"\1" * 1000)  # a fine-tune with the same file sizes
    assert model_revision("vllm", str(checkpoint)) != first
