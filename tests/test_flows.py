"""The Prefect flows under Prefect's test harness (an ephemeral API in a temporary home): subflows, outputs,
the cross-run cache keyed on input fingerprints, and the end-to-end flow on the real SmolLM2 engine."""
import json

import polars as pl
import pytest

from flows.curate import curate_flow
from flows.end_to_end import end_to_end_flow
from flows.synthesize import synthesize_flow
from pipeline import recipes
from pipeline.core.rundir import read_shards

FAKE = {"backend": "fake", "model": "flow-model", "options": {"script": {"<|im_start|>assistant\n": "An answer."}}}
CURATE = {"k": 3, "dedup": ["exact", "minhash"], "shard_size": 4,
           "quality_filters": [{"name": "instruction_words_at_least", "min_words": 2}]}  # fake instructions have 2 words

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_synthesize_flow_runs_each_step_as_a_task(tmp_path, step_calls):
    last = synthesize_flow(out=str(tmp_path), n=6, seed=0, engine=FAKE, options={"turns": 2, "shard_size": 4})
    assert step_calls == ["instructions", "instructions-filtered", "responses", "followups-2", "responses-2", "filtered"]
    assert last == str(tmp_path / "filtered") and read_shards(tmp_path / "filtered").height > 0


def test_end_to_end_flow_writes_every_output_and_a_rerun_is_served_from_the_cache(tmp_path, step_calls):
    summary = end_to_end_flow(out=str(tmp_path), n=10, seed=1, engine=FAKE, synthesize={"shard_size": 4}, curate=CURATE)
    steps = ["instructions", "instructions-filtered", "responses", "filtered", "pii", "quality-filtered", "dedup-exact", "dedup-minhash",
             "embedded", "scored", "selected"]
    assert step_calls == steps and list(summary["stages"]) == steps
    exported = pl.read_parquet(tmp_path / "export" / "data.parquet")
    assert exported.height == summary["stages"]["selected"]["rows_out"] == 3
    assert exported["id"].to_list() == read_shards(tmp_path / "selected")["id"].to_list()
    assert (tmp_path / "export" / "README.md").read_text().startswith("---\n")
    assert set(summary["trainer"]) == {"trl", "hf", "llamafactory", "axolotl"}
    assert (tmp_path / "export" / "llamafactory" / "dataset_info.json").exists()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["selected"] == 3 and report["pool"] == summary["stages"]["scored"]["rows_out"]
    manifest = (tmp_path / "manifest.jsonl").read_text()

    # the same flow again: every step task is a cache hit (no task body runs) and nothing is appended
    step_calls.clear()
    again = end_to_end_flow(out=str(tmp_path), n=10, seed=1, engine=FAKE, synthesize={"shard_size": 4}, curate=CURATE)
    assert step_calls == [] and again["stages"] == summary["stages"]
    assert (tmp_path / "manifest.jsonl").read_text() == manifest
    assert pl.read_parquet(tmp_path / "export" / "data.parquet").equals(exported)

    # a shard of a cached step deleted: the cache does not serve that step, the runner redoes the missing shard only
    (tmp_path / "responses" / "shard-00001.parquet").unlink()
    step_calls.clear()
    end_to_end_flow(out=str(tmp_path), n=10, seed=1, engine=FAKE, synthesize={"shard_size": 4}, curate=CURATE)
    assert step_calls == ["responses"] and (tmp_path / "responses" / "shard-00001.parquet").exists()
    redone = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()][len(manifest.splitlines()):]
    assert [(e["stage"], e["shard"]) for e in redone] == [("responses", 1)]
    assert pl.read_parquet(tmp_path / "export" / "data.parquet").equals(exported)

    # the cache record lives in the stage directory: deleting one stage recomputes that stage only (its
    # output has the same content, so the stages after it are still cache hits)
    import shutil
    shutil.rmtree(tmp_path / "scored")
    step_calls.clear()
    end_to_end_flow(out=str(tmp_path), n=10, seed=1, engine=FAKE, synthesize={"shard_size": 4}, curate=CURATE)
    assert step_calls == ["scored"]


def test_scheduled_nights_get_their_own_directory_and_seed_resume_on_retry_and_grow_one_corpus(tmp_path, step_calls):
    from datetime import datetime, timezone

    from pipeline.select.corpus_index import CorpusIndex

    runs, corpus = tmp_path / "nightly", tmp_path / "corpus"
    night = dict(runs=str(runs), n=8, seed=7, engine=FAKE, synthesize={"shard_size": 4}, curate=CURATE, corpus=str(corpus))
    run_step = recipes.run_step

    def dies_in_responses(out, step, source, **kwargs):
        if step.name == "responses":
            raise KeyboardInterrupt("the worker was killed")
        return run_step(out, step, source, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(recipes, "run_step", dies_in_responses)
        end_to_end_flow(run_name="2026-11-28", **night)
    step_calls.clear()
    first = end_to_end_flow(run_name="2026-11-28", **night)  # the retry resumes: the instructions are not redone
    assert step_calls[:2] == ["responses", "filtered"] and "instructions" not in step_calls
    second = end_to_end_flow(**night)  # no run name: the flow run's scheduled date (today, for a manual run)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert first["run_dir"] == str(runs / "2026-11-28") and second["run_dir"] == str(runs / today)
    recorded = [json.loads((runs / name / "run.json").read_text()) for name in ("2026-11-28", today)]
    assert [r["seed"] for r in recorded] == [first["seed"], second["seed"]] and first["seed"] != second["seed"] != 7
    assert recorded[0]["base_seed"] == 7 and recorded[1]["scheduled"].startswith(today)
    nights = [pl.read_parquet(runs / name / "export" / "data.parquet") for name in ("2026-11-28", today)]
    assert set(nights[0]["id"]).isdisjoint(nights[1]["id"])  # another seed, other rows

    assert (first["corpus"]["addition"], second["corpus"]["addition"]) == (0, 1)
    index = CorpusIndex(corpus / "index")
    assert index.size() == first["corpus"]["rows_added"] + second["corpus"]["rows_added"] == pl.read_parquet(corpus / "data").height
    index.close()
    calls = len(step_calls)
    again = end_to_end_flow(run_name="2026-11-28", **night)  # a finished night triggered again: nothing changes
    assert len(step_calls) == calls and again["corpus"]["already"] is True
    assert len((corpus / "corpus.jsonl").read_text().splitlines()) == 2


def test_the_mine_flow_runs_wildfeedback_and_bleuberi_as_tasks(tmp_path, step_calls):
    from flows.mine import mine_flow

    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [
        [{"role": "user", "content": "How far is the Moon?"}, {"role": "assistant", "content": "About 100 km."},
         {"role": "user", "content": "No, that is wrong!"}],
        [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}]]))
    judge = {"backend": "fake", "model": "miner", "options": {"script": {
        "last message: No": '{"verdict": "DSAT", "reason": "an error"}', "State what": '{"preference": "Be exact."}',
        "Be exact": "384,400 km."}}}
    last = mine_flow(out=str(tmp_path / "feedback"), input_path=str(logs), method="feedback", engine=judge)
    assert step_calls == ["pii", "feedback-classified", "feedback-preferences", "feedback-pairs"]
    pairs = read_shards(last)
    assert pairs.height == 1 and pairs["chosen"][0].to_list()[-1]["content"] == "384,400 km."
    step_calls.clear()
    last = mine_flow(out=str(tmp_path / "bleuberi"), input_path=str(logs), method="bleuberi", engine=judge,
                     options={"k": 1, "mode": "hard"})
    assert step_calls == ["bleu", "selected"] and read_shards(last).height == 1


def test_curate_flow_on_changed_input_recomputes(tmp_path, step_calls):
    data = tmp_path / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Question {i} about topic {i * 7}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = curate_flow(out=str(tmp_path / "a"), input_path=str(data), engine=FAKE, options=CURATE)
    assert read_shards(first).height == 3
    # a second run directory is a separate cache (results live in the run): its steps run
    step_calls.clear()
    curate_flow(out=str(tmp_path / "b"), input_path=str(data), engine=FAKE, options=CURATE)
    assert step_calls == ["pii", "quality-filtered", "dedup-exact", "dedup-minhash", "embedded", "scored", "selected"]
    with pytest.raises(ValueError, match="exactly one of source"):
        curate_flow(out=str(tmp_path / "c"), engine=FAKE, options=CURATE)


def test_a_secret_in_engine_options_is_refused_before_prefect_stores_it(tmp_path):
    engine = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "options": {"api_key": "sk-0123456789abcdefXYZ"}}
    with pytest.raises(ValueError, match="api_key_env"):
        synthesize_flow(out=str(tmp_path), n=2, engine=engine)


@pytest.mark.real_llm
@pytest.mark.parametrize("method, options", [
    ("mcts", {"iterations": 2, "responses": 1, "response_max_tokens": 48}),
    ("codeclm", {"n_metadata": 2, "max_iterations": 1, "keep_unresolved": True, "judge_mode": "logprobs",
                 "response_max_tokens": 48})])
def test_synthesize_flow_from_seeds_on_smollm2(tmp_path, method, options):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "How do I make my tomato plants grow bigger?"}\n{"instruction": "What is 15% of 80?"}\n')
    last = synthesize_flow(out=str(tmp_path / "run"), method=method, seeds=str(seeds), engine={"backend": "llamacpp"},
                           options=options)
    rows = read_shards(last)
    assert rows.height > 0 and all(m[0]["role"] == "user" and m[-1]["role"] == "assistant" for m in rows["messages"].to_list())
    with pytest.raises(ValueError, match="pass seeds=PATH"):
        synthesize_flow(out=str(tmp_path / "other"), method=method, engine={"backend": "llamacpp"})


@pytest.mark.real_llm
@pytest.mark.vllm
@pytest.mark.slow
def test_aligndata_run_is_the_end_to_end_flow_on_the_offline_default_model(tmp_path):
    """The README's quick start at its defaults: 24 instructions, 12 selected rows, every output; run again, every
    step is a cache hit (no shard recomputed)."""
    from typer.testing import CliRunner

    from flows.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--out", str(out)])
    assert result.exception is None and result.exit_code == 0, result.output
    lines = (out / "manifest.jsonl").read_text().splitlines()
    manifest = [json.loads(line) for line in lines]
    assert {e["engine"]["model"] for e in manifest if e.get("engine")} == {"smollm2"}
    assert read_shards(out / "instructions").height == 24
    exported = pl.read_parquet(out / "export" / "data.parquet")
    scored = read_shards(out / "scored")
    assert exported.height == 12 and scored["deita_score"].null_count() < scored.height
    assert exported["deita_score"].is_not_null().all()
    rerun = CliRunner().invoke(app, ["run", "--out", str(out)])
    assert rerun.exception is None and rerun.exit_code == 0, rerun.output
    assert (out / "manifest.jsonl").read_text().splitlines() == lines  # nothing recomputed
    assert pl.read_parquet(out / "export" / "data.parquet").equals(exported)
    for path in ("export/README.md", "export/trl/sft.parquet", "export/hf/sft/dataset_info.json",
                 "export/llamafactory/dataset_info.json", "export/axolotl/axolotl_datasets.yaml", "report/index.html"):
        assert (out / path).exists(), path
    assert "<svg" in (out / "report" / "index.html").read_text()


def test_the_isheep_flow_runs_iterations_as_tasks_and_trains_between_them(tmp_path, step_calls, monkeypatch):
    import flows.selfalign
    from flows.selfalign import isheep_flow

    trained = []
    monkeypatch.setattr(flows.selfalign, "lora_sft", lambda base, data, out, settings: trained.append(
        (base, settings.max_steps)) or f"{base}-after-{out.parent.name}")
    tasks = {seed: f" Describe a variation of: {seed.lower()}\n4. Input:\n<noinput>\n" for seed in
             ("Explain why the sky", "Rewrite the sentence", "Classify the review", "Give three practical", "Summarize the",
              "Write a Python", "What is the difference", "Translate the", "Suggest a name", "Find the grammatical",
              "Solve the equation", "Write a short", "Compare renting", "Turn the list", "How does a vaccine", "Sort the")}
    engine = {"backend": "fake", "model": "base", "options": {"script": {
        "for its quality": "9||good", "how well it follows": "9||good", **tasks}}}
    report = isheep_flow(out=str(tmp_path / "run"), n=8, iterations=2, engine=engine, train={"max_steps": 3})
    assert step_calls == ["tasks", "tasks-filtered", "answered", "assessed", "selected"] * 2
    assert trained == [("base", 3), ("base", 3)]  # both from the base model, with the flow's settings
    assert [it["model"] for it in report["iterations"]] == ["base", "base-after-iter-1"]
    assert all(it["kept"] > 0 for it in report["iterations"])


def test_the_guide_align_flow_builds_the_library_then_answers(tmp_path, step_calls):
    from flows.selfalign import guide_align_flow

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"instruction": "How do I store bleach safely?"}) + "\n")
    engine = {"backend": "fake", "model": "writer", "options": {"script": {
        "[User input]": "- Keep chemicals away from children.", "Follow these guidelines": "Guided."}}}
    out = guide_align_flow(out=str(tmp_path / "run"), input_path=str(inputs), engine=engine, options={"k": 1})
    assert step_calls == ["guidelines-written", "library", "guided"]
    row = pl.read_parquet(out["data"])
    assert json.loads(row["meta"][0])["guide_align"]["guidelines"] == ["Keep chemicals away from children."]
    assert row["messages"][0].to_list()[-1]["content"] == "Guided."


def test_the_mine_flow_runs_honesty_urial_and_moi(tmp_path, step_calls):
    from flows.mine import mine_flow

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Capital of France?", "output": "Paris", "category": "geo"},
        {"instruction": "2 + 2?", "output": "four", "category": "math"}]))  # not a hex digit: fake replies are hashes
    engine = {"backend": "fake", "model": "m", "options": {"script": {"Q: Capital": "Paris", "# Query:\n```\n2 + 2?": "2 + 2 = 4\n```"}}}
    last = mine_flow(out=str(tmp_path / "honesty"), input_path=str(qa), method="honesty", engine=engine, options={"m": 2})
    rows = read_shards(last)
    assert step_calls == ["answered", "honesty-absolute"] and rows.height == 2
    assert sorted(m[1]["content"] for m in rows["messages"].to_list())[0] == "I apologize, but I'm not able to provide an answer to the question."
    step_calls.clear()
    last = mine_flow(out=str(tmp_path / "urial"), input_path=str(qa), method="urial", engine=engine)
    answers = [m[-1]["content"] for m in read_shards(last)["messages"].to_list()]
    assert step_calls == ["urial"] and len(answers) == 2 and answers[1] == "2 + 2 = 4"  # the dataset's answer was replaced
    step_calls.clear()
    last = mine_flow(out=str(tmp_path / "moi"), input_path=str(qa), method="moi",
                     options={"system_prompts": {"*": "You are helpful."}, "max_tokens": 512})
    packed = read_shards(last)
    roles = [m["role"] for m in packed["messages"][0]]
    assert step_calls == ["packed"] and packed.height == 1 and roles == ["system", "user", "assistant"] * 2


@pytest.mark.slow
def test_the_synthesize_flow_spreads_engine_steps_over_replicas_with_the_same_rows(tmp_path):
    import ray

    local = synthesize_flow(out=str(tmp_path / "local"), n=8, engine=FAKE, options={"shard_size": 2})
    try:
        replicated = synthesize_flow(out=str(tmp_path / "replicas"), n=8, engine=FAKE, options={"shard_size": 2},
                                     replicas=2, ray_address="local")
    finally:
        ray.shutdown()
    assert read_shards(replicated).drop("meta").equals(read_shards(local).drop("meta"))
