"""A stage's identity and cache key follow its code: editing one stage's module, or a data file of its package,
recomputes that stage and the ones after it, and nothing before it."""
import ast
import importlib
import json
import shutil
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest

from pipeline.core import codehash
from pipeline.core.rundir import StageMismatch, read_manifest, read_shards
from pipeline.recipes import Step, run_steps
from pipeline.score import deita
from pipeline.synth import isheep, magpie, mcts

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
    codehash.clear_caches()


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


@pytest.fixture
def synth_copy(tmp_path, monkeypatch):
    """pipeline/synth as a copy whose data files a test may edit; code_hash reads the package from there."""
    real, original = codehash._package_dir("pipeline.synth"), codehash.code_hash(mcts.search_stage)
    copy = Path(shutil.copytree(real, tmp_path / "synth", ignore=shutil.ignore_patterns("__pycache__")))
    monkeypatch.setattr(codehash, "_package_dir", lambda package: copy if package == "pipeline.synth" else
                        codehash._module_file(package).parent)
    codehash.clear_caches()
    assert codehash.code_hash(mcts.search_stage) == original  # where the package lies is not part of the hash
    yield copy
    codehash.clear_caches()


def test_a_data_file_a_stage_reads_is_part_of_its_code_hash(synth_copy):
    data = synth_copy / "data" / "principles.json"
    assert Path(str(resources.files("pipeline.synth").joinpath("data/principles.json"))) == \
        codehash._module_file("pipeline.synth.mcts").parent / "data" / "principles.json"  # the file MCTS reads
    before = {f: codehash.code_hash(f) for f in (mcts.search_stage, deita.score, isheep.plan)}

    table = json.loads(data.read_text())
    table["Helpfulness"]["Conciseness"] = "making it shorter"  # a new action for every tree
    data.write_text(json.dumps(table))
    codehash.clear_caches()
    assert codehash.code_hash(mcts.search_stage) != before[mcts.search_stage]
    assert codehash.code_hash(isheep.plan) != before[isheep.plan]  # one package, one set of data files
    assert codehash.code_hash(deita.score) == before[deita.score]  # score/ has no such file


def test_what_counts_as_a_package_data_file(synth_copy):
    files = [path for path, _ in codehash.package_data("pipeline.synth")]
    assert {"data/principles.json", "data/isheep_seed_tasks.jsonl"} <= set(files)
    assert not [f for f in files if f.endswith((".py", ".pyc"))]  # modules are hashed as modules
    first = codehash.code_hash(mcts.search_stage)
    (synth_copy / "data" / ".principles.json.swp").write_text("editor state")
    (synth_copy / "__pycache__").mkdir(exist_ok=True)
    (synth_copy / "__pycache__" / "x.pyc").write_bytes(b"\0")
    codehash.clear_caches()
    assert codehash.code_hash(mcts.search_stage) == first
    (synth_copy / "prompts").mkdir()
    (synth_copy / "prompts" / "judge.txt").write_text("Rate the answer.")  # any non-package folder counts
    codehash.clear_caches()
    assert codehash.code_hash(mcts.search_stage) != first
    assert codehash.package_data("pipeline.score") == ()


def test_every_package_whose_data_a_module_reads_is_in_its_closure():
    """The one way around package granularity: importlib.resources.files("another.package") without an import."""
    root = Path(codehash._module_file("pipeline").parent).parent
    escaped = []
    for path in sorted([*(root / "pipeline").rglob("*.py"), *(root / "filters").rglob("*.py")]):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        packages = {codehash._package_of(m) for m in codehash.module_closure(name)}
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "files"
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value not in packages):
                escaped.append(f"{name} reads {node.args[0].value}")
    assert escaped == []
