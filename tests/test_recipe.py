"""Recipes: a YAML file of built-in and user stages, checked whole before any model loads (one-line errors, exit 2),
printed from the built-in jobs' own builders, run to the same rows as the jobs, and a user's stage under the runner's
guarantees (resume, drop reasons, engine failures, code hash in the identity)."""
import importlib
import json
import os
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline import recipes
from pipeline.core import codehash
from pipeline.core.rundir import read_manifest, read_shards
from pipeline.engines import EngineSpec
from pipeline.recipes import registry
from pipeline.recipes.recipe import load_recipe
from pipeline.recipes.recipe_jobs import job_recipe

runner = CliRunner()
FAKE = {"backend": "fake", "model": "fake-model"}
ROWS = [{"instruction": f"Explain topic number {i} in simple words please.", "output": f"Topic {i} is about things."}
        for i in range(6)] + [{"instruction": "Explain topic number 0 in simple words please.", "output": "A copy."}]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def check(path: Path):
    return runner.invoke(app, ["recipe", "check", str(path)])


def one_line_error(result) -> str:
    """The error of a refused command: exit 2 through SystemExit (never a traceback), one line."""
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


BASE = {"input": "data.jsonl", "engines": {"small": FAKE}, "engine": "small",
        "steps": [{"stage": "filters.mark", "params": {"spec": ["unique_instruction"]}},
                  {"stage": "deita.score", "params": {"mode": "judge"}}]}


def test_check_accepts_a_recipe_and_names_its_steps(tmp_path, data):
    result = check(write(tmp_path / "r.yaml", BASE))
    assert result.exit_code == 0, result.output
    assert "ok, 2 steps" in result.output and "filters-mark" in result.output and "deita-score" in result.output


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["steps"][1].update(stage="deita.scores"),
     r"step 2: unknown stage 'deita.scores' \(did you mean 'deita.score'\?\); valid: audit, .*selection.dedup, .*or your function"),
    (lambda r: r["steps"][1]["params"].update(top_logprob=5),
     r"step 2 'deita-score' \(deita.score\): unknown parameter 'top_logprob' \(did you mean 'top_logprobs'\?\); valid: mode, top_logprobs, part"),
    (lambda r: r["steps"][1].update(engine="judge"),
     r"step 2 'deita-score' \(deita.score\): engine 'judge' is not defined; defined: small"),
    (lambda r: r.pop("engine"), r"step 2 'deita-score' \(deita.score\) needs an engine"),
    (lambda r: r["steps"][0]["params"].update(spec=["unique_instructions"]), r"unknown filter 'unique_instructions'; valid filters: \["),
    (lambda r: r["steps"].append({"stage": "filter", "params": {"where": "judge_scor > 3"}}), r"step 3 'filter' \(filter\): filter: .*judge_scor"),
    (lambda r: r["steps"].append({"stage": "selection.diverse_top_k"}), r"step 3 .*missing parameter\(s\) k"),
    (lambda r: r["steps"].append({"stage": "selection.diverse_top_k", "params": {"k": "ten"}}), r"parameter k: .*valid integer"),
    (lambda r: r["steps"][1].update(shard_size="big"), r"r.yaml: steps\[1\].shard_size: Input should be a valid integer"),
    (lambda r: r["steps"][1].update(stages="x"), r"steps\[1\].stages: Extra inputs are not permitted"),
    (lambda r: r["engines"]["small"].update(backend="gpt"), r"engines.small: unknown backend 'gpt'; valid: llamacpp, "),
    (lambda r: r["engines"]["small"].update(options={"api_key": "sk-abcdefghijklmnopqrstuvwxyz"}), r"holds a secret"),
    (lambda r: r.update(plan={"n": 4}), r"input: PATH \(your data\) or plan: .*one"),
    (lambda r: r["steps"].append({"stage": "judge", "params": {"rubric": "Good?", "scale": [1, 10]}}), r"scale must be \[low, high\]"),
    (lambda r: r["steps"].append({"stage": "generate", "params": {"prompt": "{{ x", "output": "meta"}}), r"generate prompt template, line 1"),
    (lambda r: r["steps"].append({"stage": "nomodule_here:fn"}), r"step 3: cannot import 'nomodule_here:fn' \(ModuleNotFoundError"),
])
def test_check_refuses_what_would_not_run_in_one_line(tmp_path, data, change, expected):
    import copy
    import re

    recipe = copy.deepcopy(BASE)
    change(recipe)
    line = one_line_error(check(write(tmp_path / "r.yaml", recipe)))
    assert re.search(expected, line), line


def test_a_file_that_is_not_a_recipe_is_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: [\n")
    assert "bad.yaml, line 2: not valid YAML" in one_line_error(check(tmp_path / "bad.yaml"))
    assert "cannot read the recipe" in one_line_error(check(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n")
    assert "a recipe is a mapping" in one_line_error(check(tmp_path / "list.yaml"))


def test_every_built_in_job_prints_as_a_recipe_that_compiles_to_its_own_steps(tmp_path):
    normal = lambda steps: [json.loads(json.dumps(vars(s), default=list)) for s in steps]  # noqa: E731  tuples as lists
    engine = EngineSpec.make("fake", "fake-model")
    for job in registry.JOBS:
        path = tmp_path / f"{job}.yaml"
        path.write_text(job_recipe(job, engine=engine))
        if "data.jsonl" in path.read_text():
            (tmp_path / "data.jsonl").touch()
        options = {"model": "fake-model"} if job in ("magpie", "magpie-extend") else {}
        assert normal(load_recipe(path).steps) == normal(registry.job_steps(job, **options)), job
    # options reach the builder; a step with its own engine gets a named engine block
    complexity = {"backend": "fake", "model": "complexity-model"}
    text = job_recipe("curate", engine=engine, options={"k": 5, "complexity_engine": complexity, "dedup": ["exact"]})
    shown = yaml.safe_load(text)
    assert shown["engines"]["scored-complexity"] == complexity
    assert [s["name"] for s in shown["steps"]] == [s.name for s in recipes.curate_steps(
        k=5, complexity_engine=complexity, dedup=("exact",))]


def test_show_on_the_command_line(tmp_path):
    result = runner.invoke(app, ["recipe", "show", "curate", "--engine", "llamacpp", "--set", "k=7"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["engines"]["default"] == {"backend": "llamacpp", "model": "smollm2"}
    assert shown["steps"][-1] == {"name": "selected", "stage": "selection.diverse_top_k", "params": {"k": 7, "tau": 0.9},
                                  "shard_size": None}
    assert "unexpected keyword argument 'kk'" in one_line_error(runner.invoke(app, ["recipe", "show", "curate", "--set", "kk=1"]))
    bad = runner.invoke(app, ["recipe", "show", "kurate"])
    assert bad.exit_code == 2 and isinstance(bad.exception, SystemExit) and "curate" in bad.output


def test_the_registry_holds_every_stage_a_job_writes_and_stages_lists_their_signatures():
    written = {path for path, _ in registry._written_steps()}
    built = {s.stage for job in registry.JOBS for s in registry.job_steps(job)}
    paths = {s.path for s in registry.stages().values()}
    assert written | built <= paths and {"generate", "judge", "filter"} <= set(registry.stages())
    assert registry.stages()["selection.dedup"].shard_size is None  # dedup compares rows: the whole input
    assert registry.stages()["deita.score"].computes == ("deita_score",)
    listing = runner.invoke(app, ["recipe", "stages"])
    assert listing.exit_code == 0
    for stage in registry.stages().values():
        assert f"{stage.name}  ({stage.path};" in listing.output
    assert "    tau: float = 0.9" in listing.output and "roles: target" in listing.output


def run_recipe(path: Path, out: Path, *extra: str):
    return runner.invoke(app, ["recipe", "run", str(path), "--out", str(out), *extra])


def test_a_printed_job_runs_to_the_rows_of_the_job(tmp_path, data):
    options = {"k": 3, "dedup": ("exact", "minhash"), "quality_filters": [], "shard_size": 4}
    spec = EngineSpec.make("fake", "fake-model")
    expected = recipes.curate_job(tmp_path / "job", input_path=data, engine=spec, **options)
    shown = yaml.safe_load(job_recipe("curate", engine=spec, options=options))
    write(tmp_path / "curate.yaml", shown | {"input": str(data)})
    result = run_recipe(tmp_path / "curate.yaml", tmp_path / "recipe")
    assert result.exit_code == 0, result.output
    job_rows = pl.read_parquet(expected["export"])
    assert pl.read_parquet(tmp_path / "recipe" / "export" / "data.parquet").equals(job_rows) and job_rows.height == 3
    job_stages = json.loads((tmp_path / "job" / "scored" / "stage.json").read_text())
    assert json.loads((tmp_path / "recipe" / "scored" / "stage.json").read_text()) == job_stages  # the same identity

    # magpie from its plan, with the job's model deciding the profile
    magpie = recipes.magpie_job(tmp_path / "magpie-job", n=5, seed=3, engine=spec, shard_size=4)
    shown = yaml.safe_load(job_recipe("magpie", engine=spec, options={"shard_size": 4})) | {"plan": {"n": 5, "seed": 3}}
    result = run_recipe(write(tmp_path / "magpie.yaml", shown), tmp_path / "magpie-recipe")
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "magpie-recipe" / "export" / "data.parquet").equals(pl.read_parquet(magpie["export"]))


STAGES = '''
import polars as pl
from pipeline.core.records import first_instructions
from pipeline.engines import Sampling, chat, failure_reason

from helpers import SUFFIX


def tag_source(df, *, engine, suffix="-x"):
    """Append a suffix to `source` after asking the engine; a failed request drops its row as the runner counts them."""
    replies = [c[0] for c in engine.generate([chat(t) for t in first_instructions(df)], Sampling(max_tokens=4))]
    return df.with_columns(pl.col("source") + suffix + SUFFIX,
                           pl.Series("drop_reason", [failure_reason([r]) for r in replies], dtype=pl.String))


def drop_containing(df, *, word):
    found = pl.Series(first_instructions(df)).str.contains(word)
    return df.with_columns(pl.when(found).then(pl.lit("has_" + word)).alias("drop_reason"))
'''


@pytest.fixture
def user_stages(tmp_path, monkeypatch):
    """A user's stage module `stages.py` and its helper `helpers.py` beside the recipe (imported from there)."""
    (tmp_path / "stages.py").write_text(textwrap.dedent(STAGES))
    (tmp_path / "helpers.py").write_text("SUFFIX = '-1'\n")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the recipe's folder is added for this test only
    yield tmp_path
    for name in ("stages", "helpers"):
        sys.modules.pop(name, None)
    codehash.clear_caches()


def done_lines(out: Path) -> list[tuple[str, int]]:
    return [(e["stage"], e["shard"]) for e in read_manifest(out) if e.get("status") == "done"]


def test_a_user_stage_runs_resumes_and_is_recomputed_when_its_code_changes(user_stages, data):
    recipe = {"input": "data.jsonl", "engines": {"fake": FAKE | {"options": {"fail_on": ["number 3"]}}}, "engine": "fake",
              "steps": [{"stage": "stages:tag_source", "params": {"suffix": "-t"}, "shard_size": 3},
                        {"name": "kept", "stage": "stages:drop_containing", "params": {"word": "number 5"}},
                        {"stage": "filters.mark", "params": {"spec": ["unique_instruction"]}}]}
    path, out = write(user_stages / "r.yaml", recipe), user_stages / "out"
    result = run_recipe(path, out, "--max-failure-rate", "0.5")
    assert result.exit_code == 0, result.output
    tagged = read_shards(out / "tag_source")
    assert set(tagged["source"]) == {"import-t-1"} and tagged.height == len(ROWS) - 1
    manifest = [e for e in read_manifest(out) if e.get("stage") == "tag_source"]
    drops = sum(e["drops"].get("engine_error:http_503", 0) for e in manifest)
    assert drops == 1 and sum(e["rows_in"] for e in manifest) == len(ROWS)  # the failed request counted, not kept
    assert [s for s, _ in done_lines(out)].count("tag_source") == 3  # 7 rows in shards of 3
    assert sum(e["drops"].get("has_number 5", 0) for e in read_manifest(out) if e.get("stage") == "kept") == 1
    exported = pl.read_parquet(out / "export" / "data.parquet")
    assert exported.height == 4 and set(exported["source"]) == {"import-t-1"}  # and the duplicate dropped by the filter

    # resume: a shard lost in a crash is redone alone; finished steps are not run again
    before = done_lines(out)
    (out / "kept" / "shard-00000.parquet").unlink()
    assert run_recipe(path, out, "--max-failure-rate", "0.5").exit_code == 0
    assert done_lines(out)[len(before):] == [("kept", 0)]

    # a helper the stage imports changes: that step's identity changes; refused, or recomputed with the ones after
    (user_stages / "helpers.py").write_text("SUFFIX = '-2'\n")
    for name in ("stages", "helpers"):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
    codehash.clear_caches()
    refused = run_recipe(path, out, "--max-failure-rate", "0.5")
    assert "tag_source was made with different ['code']" in one_line_error(refused) and "--recompute" in refused.output
    before = done_lines(out)
    assert run_recipe(path, out, "--max-failure-rate", "0.5", "--recompute").exit_code == 0
    assert [s for s, _ in done_lines(out)[len(before):]] == ["tag_source"] * 3 + ["kept", "filters-mark"]
    assert set(pl.read_parquet(out / "export" / "data.parquet")["source"]) == {"import-t-2"}

    # more failures than the rate allows: the run stops in one line, finished shards kept
    result = run_recipe(path, user_stages / "failing")
    assert result.exit_code == 2 and "failed in the engine" in result.output


def test_user_module_hash_follows_its_own_imports_not_installed_libraries(user_stages):
    sys.path.insert(0, str(user_stages))
    module = importlib.import_module("stages")
    closure = codehash.module_closure("stages")
    assert "helpers" in closure and "pipeline.engines" in closure and not any(m.startswith("polars") for m in closure)
    first = codehash.code_hash(module.tag_source)
    (user_stages / "helpers.py").write_text("SUFFIX = '-3'\n")
    codehash.clear_caches()
    assert codehash.code_hash(module.tag_source) != first


def test_the_readme_recipe_checks(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Your own pipeline: recipes"):]
    block = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml\n") + 8)]
    recipe = yaml.safe_load(block)
    assert [s["stage"] for s in recipe["steps"]][-4:] == ["filter", "embed", "deita.score", "selection.diverse_top_k"]
    (tmp_path / "readme.yaml").write_text(block)
    result = check(tmp_path / "readme.yaml")
    assert result.exit_code == 0, result.output
    assert "judge judge shard_size=32 (engine: openai-chat gpt-4o-mini)" in " ".join(result.output.split())


@pytest.mark.slow
def test_a_user_stage_runs_on_engine_replicas_with_the_rows_of_one_process(user_stages, data, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # the recipe's folder is added for this test only
    recipe = {"input": "data.jsonl", "engines": {"fake": FAKE}, "engine": "fake",
              "steps": [{"stage": "stages:tag_source", "params": {"suffix": "-r"}, "shard_size": 2}]}
    path = write(user_stages / "r.yaml", recipe)
    assert run_recipe(path, user_stages / "one").exit_code == 0
    try:
        result = runner.invoke(app, ["--replicas", "2", "recipe", "run", str(path), "--out", str(user_stages / "two")])
    finally:
        import ray
        ray.shutdown()
    assert result.exit_code == 0, result.output
    shards = sorted(e["shard"] for e in read_manifest(user_stages / "two") if e.get("stage") == "tag_source")
    assert shards == [0, 1, 2, 3]  # each shard once, from the replicas
    two, one = (read_shards(user_stages / d / "tag_source").drop("meta") for d in ("two", "one"))
    assert {c: two[c].to_list() for c in two.columns if not two[c].equals(one[c])} == {}


def test_a_generate_schema_model_is_part_of_the_step_identity(user_stages, data):
    model = "from pydantic import BaseModel\n\n\nclass Answer(BaseModel):\n    text: str\n{extra}"
    (user_stages / "answer_model.py").write_text(model.format(extra=""))
    recipe = {"input": "data.jsonl", "engines": {"fake": FAKE}, "engine": "fake",
              "steps": [{"stage": "generate", "params": {"schema": "answer_model:Answer", "field": "text"}}]}
    path = write(user_stages / "r.yaml", recipe)
    first = load_recipe(path).steps[0].params
    (user_stages / "answer_model.py").write_text(model.format(extra="    score: int = 1\n"))
    sys.modules.pop("answer_model", None)
    codehash.clear_caches()
    second = load_recipe(path).steps[0].params
    assert first["schema"] == second["schema"] and first["schema_code"] != second["schema_code"]
    sys.modules.pop("answer_model", None)
