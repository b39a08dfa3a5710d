"""The hosted chat engines on their official SDKs, against real servers on loopback: openai-chat against llama.cpp's
server and vLLM serve, anthropic against vLLM serve's Messages API; their adaptive concurrency against a server that
answers 429; provider batches (tests/fakebatch.py) killed mid-poll and resumed with one submission; tokens, cost and
a budget in the manifest, card and report."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from fakebatch import FakeBatchProvider
from pipeline.cli.commands import app
from pipeline.cli.common import hoist_global_options
from pipeline.core.rundir import read_manifest, read_shards
from pipeline.engines import EngineSpec, RawTextUnsupported, Sampling, chat, load_engine
from pipeline.engines.hosted import AdaptiveLimit
from pipeline.engines.llamacpp_server import LlamaServer

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"instruction": f"Explain {topic} in two sentences.", "output": f"{topic.capitalize()} is a topic with a long "
         "history. People study it to understand the world better and to make useful things."}
        for topic in ("photosynthesis", "compound interest", "the water cycle", "binary search", "plate tectonics",
                      "vaccination")]


@pytest.fixture(scope="module")
def llama():
    server = LlamaServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vllm_server():
    from vllmserver import VLLMServer

    server = VLLMServer().start()
    yield server
    server.stop()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_the_adaptive_limit_halves_on_429_and_grows_on_success():
    limit = AdaptiveLimit(8, 16)
    limit.saw(429)
    assert limit.limit == 4 and limit.backoffs == 1
    for _ in range(4):
        limit.saw(200)
    assert limit.limit == 5  # a run of `limit` successes adds one
    for _ in range(3):
        limit.saw(429)
    assert limit.limit == 1  # never below one
    timed = AdaptiveLimit(4, 4, rpm=2)
    timed.acquire(), timed.release(), timed.acquire(), timed.release()
    assert timed._room(0) > 50  # the third request of the minute waits for the first to leave the window


class TooManyRequests(BaseHTTPRequestHandler):
    """/v1/chat/completions that answers 429 (retry-after-ms: 20) to the first `limit` requests, then a reply."""
    refused, limit, lock = 0, 6, threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        with TooManyRequests.lock:
            refuse = TooManyRequests.refused < TooManyRequests.limit
            TooManyRequests.refused += refuse
        body = {"error": {"message": "slow down"}} if refuse else {
            "id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
        data = json.dumps(body).encode()
        self.send_response(429 if refuse else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if refuse:
            self.send_header("retry-after-ms", "20")
        self.end_headers()
        self.wfile.write(data)


def test_a_server_that_answers_429_gets_fewer_requests_in_flight_and_every_row_an_answer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TooManyRequests)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = load_engine(EngineSpec.make("openai-chat", "m", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                                             options={"concurrency": 8, "retries": 8}))
        out = engine.generate([chat(f"q{i}") for i in range(16)], Sampling(max_tokens=4))
        assert all(c[0].text == "ok" for c in out)  # the SDK retried each 429 after its retry-after
        assert engine.limit.backoffs == 6 and engine.limit.limit < 8
        assert engine.usage.requests == 16 and engine.usage.prompt_tokens == 48
    finally:
        server.shutdown()


@pytest.mark.real_llm
@pytest.mark.server
def test_openai_chat_on_llama_cpps_server(llama):
    engine = load_engine(EngineSpec.make("openai-chat", "smollm2", base_url=llama.url, options={"json_mode": "json_object"}))
    requests = [chat("Name a color."), chat("Say hi.", system="Be brief.")]
    # Each request carries its row's seed. Whether a server reproduces it is the server's: llama_cpp.server does not
    # (its prompt cache carries state between requests; measured: a repeated request, even greedy, can differ).
    assert engine.body(requests[0], Sampling(temperature=1.0), 7)["seed"] == 7
    first = engine.generate(requests, Sampling(max_tokens=12, temperature=1.0, logprobs=5), seeds=[1, 2])
    assert all(c[0].text for c in first)
    assert all(len(c[0].logprobs) == c[0].n_tokens and c[0].prompt_tokens > 0 for c in first)
    schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
    [[shaped]] = engine.generate([chat("A JSON object with a color.")], Sampling(max_tokens=40, temperature=0.0,
                                                                                  json_schema=Sampling.schema(schema)))
    assert "color" in json.loads(shaped.text)
    [[long]] = engine.generate([chat("word " * 3000)], Sampling(max_tokens=4))
    assert long.error_kind == "too_long"
    with pytest.raises(RawTextUnsupported, match="openai-chat sends conversations.*use --engine vllm, llamacpp, or openai"):
        engine.generate(["<|im_start|>user\n"], Sampling())
    assert engine.usage.requests == 4 and engine.usage.failed == 1


@pytest.mark.real_llm
@pytest.mark.server
def test_a_raw_text_stage_on_a_chat_engine_is_one_line(tmp_path, llama):
    result = CliRunner().invoke(app, ["magpie", "--out", str(tmp_path), "--n", "2", "--engine", "openai-chat",
                                      "--base-url", llama.url, "--model", "smollm2"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "openai-chat sends conversations, and Magpie's pre-query instruction prompt needs raw text" in \
        " ".join(result.output.split())


@pytest.mark.real_llm
@pytest.mark.server
def test_curate_scores_real_rows_through_openai_chat_with_tokens_and_cost(tmp_path, llama, data):
    prices = tmp_path / "prices.yaml"
    prices.write_text("smollm2: {input: 1.0, output: 2.0}\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, hoist_global_options(
        ["curate", "--input", str(data), "--out", str(out), "--k", "3", "--engine", "openai-chat", "--base-url", llama.url,
         "--model", "smollm2", "--dedup", "exact", "--prices", str(prices)]), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    scored = read_shards(out / "scored")
    entries = [e for e in read_manifest(out) if e.get("stage") == "scored" and e.get("status") == "done"]
    tokens = entries[0]["tokens"]["engine"]
    assert scored.height == 6 and tokens["requests"] == 12 and tokens["prompt_tokens"] > 0  # two prompts a row
    expected = (tokens["prompt_tokens"] * 1.0 + tokens["completion_tokens"] * 2.0) / 1e6
    assert entries[0]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    card = (out / "export" / "README.md").read_text()
    assert "## Tokens and cost" in card and "| scored | smollm2 | openai-chat | 12 |" in card
    from pipeline.ship import report

    assert "<h2>Tokens and cost</h2>" in report.write(out).read_text()
    assert "tokens:" in result.output


@pytest.mark.real_llm
@pytest.mark.server
def test_a_budget_stops_the_run_before_it_is_passed_and_the_rerun_goes_on(tmp_path, llama, data):
    prices = tmp_path / "prices.yaml"
    prices.write_text("smollm2: {input: 1000.0, output: 1000.0}\n")  # ~$0.4 a row
    out = tmp_path / "run"
    args = ["magpie-dpo", "--input", str(data), "--out", str(out), "--k", "2", "--engine", "openai-chat",
            "--base-url", llama.url, "--model", "smollm2", "--shard-size", "2", "--option", "batch_rows=2",
            "--max-tokens", "8", "--prices", str(prices)]
    stopped = CliRunner().invoke(app, hoist_global_options([*args, "--max-cost", "1.0"]))
    assert stopped.exit_code == 2 and "past --max-cost $1" in " ".join(stopped.output.split())
    finished = {e["shard"] for e in read_manifest(out) if e.get("status") == "done" and e["stage"] != "input"}
    assert 0 < len(finished) < 3  # it stopped before the window that would pass the budget
    done = CliRunner().invoke(app, hoist_global_options([*args, "--max-cost", "100"]))
    assert done.exit_code == 0, done.output
    unpriced = CliRunner().invoke(app, hoist_global_options([*args[:-2], "--out", str(tmp_path / "other"), "--max-cost", "1"]))
    assert unpriced.exit_code == 2 and "no price for ['smollm2']" in " ".join(unpriced.output.split())


@pytest.mark.real_llm
@pytest.mark.server
def test_a_magpie_run_whose_responses_come_from_a_chat_engine(tmp_path, llama):
    responder = json.dumps({"backend": "openai-chat", "model": "smollm2", "base_url": llama.url})
    result = CliRunner().invoke(app, ["magpie", "--out", str(tmp_path), "--n", "3", "--engine", "llamacpp",
                                      "--instruction-max-tokens", "48", "--response-max-tokens", "48",
                                      "--responder", responder], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path)
    assert {e["engine"]["backend"] for e in manifest if e.get("stage") == "instructions"} == {"llamacpp"}
    assert {e["engine"]["backend"] for e in manifest if e.get("stage") == "responses"} == {"openai-chat"}
    rows = read_shards(tmp_path / "responses")
    assert rows.height == 3 and all(len(m) == 2 and m[1]["content"] for m in rows["messages"].to_list())


@pytest.mark.real_llm
@pytest.mark.server
@pytest.mark.slow
def test_both_chat_apis_on_vllm_serve_curate_real_rows(tmp_path, vllm_server, data):
    """openai-chat continues the opened reply on vLLM (prefill=continue: scores from the digits' logprobs) and the
    anthropic engine speaks the Messages API to the same server (no logprobs: the rated digit, noted in the card)."""
    for name, engine in (("oc", ["--engine", "openai-chat", "--base-url", vllm_server.url, "--option", "prefill=continue"]),
                         ("an", ["--engine", "anthropic", "--base-url", vllm_server.root])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["curate", "--input", str(data), "--out", str(out), "--k", "3", "--model",
                                          "smollm2", "--dedup", "exact", *engine], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        scored = read_shards(out / "scored")
        complexity = scored["complexity"].list.first().drop_nulls().len()
        if name == "oc":  # every digit's logprob at the opened reply: every row scored
            assert scored.height == 6 and scored["deita_score"].drop_nulls().len() == 6
        else:  # the written digit where SmolLM2 wrote one; its nulls are counted, never selected
            assert scored.height == 6 and complexity >= 1
            nulls = sum(e["nulls"].get("deita_score", 0) for e in read_manifest(out) if e.get("stage") == "scored")
            assert nulls == scored["deita_score"].null_count()
        card = (out / "export" / "README.md").read_text()
        assert ("digit the judge wrote" in card) == (name == "an")


CHILD = """
import sys
sys.path[:0] = [{root!r}]
from pipeline.engines import EngineSpec
from pipeline.recipes.runner import run_stage
from pipeline.synth import magpie
import polars as pl
plan = pl.read_parquet({plan!r})
run_stage({out!r}, "responses", magpie.respond, source=plan, engine=EngineSpec.from_json({spec!r}), shard_size=4,
          params={{"max_tokens": 16}})
"""


def questions(n: int) -> pl.DataFrame:
    from pipeline.synth import magpie

    plan = magpie.plan(n, seed=0)
    return plan.with_columns(pl.Series("messages", [[{"role": "user", "content": f"Name {i} fruit."}] for i in range(n)],
                                       dtype=plan.schema["messages"]))


@pytest.mark.real_llm
@pytest.mark.server
def test_a_batch_run_killed_while_polling_reattaches_with_one_submission(tmp_path, llama):
    plan = tmp_path / "plan.parquet"
    questions(6).write_parquet(plan)
    out = tmp_path / "run"
    with FakeBatchProvider(llama.url, hold=True) as provider:
        spec = EngineSpec.make("openai-chat", "smollm2", base_url=provider.url, options={"batch": True, "batch_poll": 0.1})
        script = CHILD.format(root=str(ROOT), plan=str(plan), out=str(out), spec=spec.to_json())
        child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
        deadline = time.time() + 300  # the child imports torch and the engines first: slow on a loaded 2-core host
        while time.time() < deadline and not list((out / "responses" / "batches").glob("*.json")):
            assert child.poll() is None, "the child run ended before its batch was submitted"
            time.sleep(0.1)
        assert provider.created, "no batch was submitted in 300 s"
        time.sleep(0.5)  # polling now
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        assert len(provider.created) == 1 and not (out / "responses" / "shard-00000.parquet").exists()
        listed = CliRunner().invoke(app, ["batches", str(out)])
        assert provider.created[0]["id"] in listed.output and "6 requests" in listed.output
        provider.hold = False
        from pipeline.recipes.runner import run_stage
        from pipeline.synth import magpie

        run_stage(out, "responses", magpie.respond, source=pl.read_parquet(plan), engine=spec, shard_size=4,
                  params={"max_tokens": 16})
        assert len(provider.created) == 1  # re-attached: no second submission
    rows = read_shards(out / "responses")
    assert sorted(rows["id"].to_list()) == sorted(questions(6)["id"].to_list())  # every row once
    assert all(m[-1]["role"] == "assistant" for m in rows["messages"].to_list())
    tokens = [e["tokens"]["engine"] for e in read_manifest(out) if e.get("status") == "done"]
    assert sum(t["batch_prompt_tokens"] for t in tokens) > 0 and not any(t.get("prompt_tokens") for t in tokens)


@pytest.mark.real_llm
@pytest.mark.server
def test_failed_and_expired_requests_of_a_batch_are_sent_again_as_a_smaller_batch(tmp_path, llama):
    from pipeline.recipes.runner import run_stage
    from pipeline.synth import magpie

    with FakeBatchProvider(llama.url, fail_once={"r1"}, expire_after=4) as provider:
        for backend, url in (("openai-chat", provider.url), ("anthropic", provider.anthropic_url)):
            spec = EngineSpec.make(backend, "smollm2", base_url=url, options={"batch": True, "batch_poll": 0.05})
            out = tmp_path / backend
            run_stage(out, "responses", magpie.respond, source=questions(6), engine=spec, shard_size=6,
                      params={"max_tokens": 12})
            made = [c for c in provider.created if c["kind"] == ("openai" if backend == "openai-chat" else "anthropic")]
            assert [len(c["custom_ids"]) for c in made] == [6, 3]  # r1 failed, r4 and r5 expired: 3 sent again
            assert read_shards(out / "responses").height == 6

    with FakeBatchProvider(llama.url, hold=True) as provider:  # cancelled: its rows fail, counted
        spec = EngineSpec.make("openai-chat", "smollm2", base_url=provider.url, options={"batch": True, "batch_poll": 0.05})
        threading.Timer(1.0, lambda: CliRunner().invoke(app, ["batches", "cancel", str(tmp_path / "cancelled")])).start()
        from pipeline.recipes.runner import EngineFailures

        with pytest.raises(EngineFailures, match="engine_error:batch_cancelled"):
            run_stage(tmp_path / "cancelled", "responses", magpie.respond, source=questions(4), engine=spec, shard_size=4,
                      params={"max_tokens": 8})
