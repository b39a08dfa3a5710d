"""Our chat engine (openai-chat) against Bespoke Curator sending the same requests to the same local server at equal
concurrency: requests per second side by side, and the ratio (goal >= 1.0).

    python bench/chat_throughput.py                      # vLLM serve on SmolLM2 (CPU), 256 requests, 16 in flight
    python bench/chat_throughput.py --server llamacpp --n 64 --concurrency 4

Equal work: the same prompts, max_tokens and greedy sampling, the same number of requests in flight (ours with its
adaptive limit pinned: concurrency = max_concurrency; Curator's max_concurrent_requests, with its request and token
rate limits set out of the way), each timed around the requests only (clients built first, Curator's start-up probe
excluded), Curator's cache disabled; the two alternate over `--rounds`.

Curator (bespokelabs-curator 0.1.31) cannot share aligndata's environment: it pins openai 2.30, anthropic 0.84,
litellm 1.83.7, pandas 2.2.2 and datasets < 4, which would replace ours. It runs from its own virtual environment
(`--curator-python`, default $ALIGNDATA_CACHE/curator-venv, made with pip on first use) and offline
(TELEMETRY_ENABLED=false, litellm's bundled cost map and tokenizer).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CURATOR = "bespokelabs-curator==0.1.31"
CURATOR_RUN = """
import glob, json, os, sys, tempfile, time
site = glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages"))[0]
os.environ.update(TELEMETRY_ENABLED="false", CURATOR_DISABLE_CACHE="1", CURATOR_CACHE_DIR=tempfile.mkdtemp(),
                  LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                  TIKTOKEN_CACHE_DIR=os.path.join(site, "litellm", "litellm_core_utils", "tokenizers"))
from bespokelabs import curator
url, model, prompts, max_tokens, concurrency = json.loads(sys.stdin.read())
llm = curator.LLM(model_name=model, backend="openai", generation_params={"max_tokens": max_tokens, "temperature": 0},
                  backend_params={"base_url": url, "api_key": "EMPTY", "max_requests_per_minute": 10**7,
                                  "max_tokens_per_minute": 10**12, "max_concurrent_requests": concurrency,
                                  "max_retries": 1, "request_timeout": 600, "require_all_responses": False,
                                  "invalid_finish_reasons": ["content_filter"]})
started = time.perf_counter()
result = llm(prompts)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "answered": int(result.dataset.to_pandas()["response"].notna().sum())}))
"""


def curator_python(given: str | None) -> str:
    if given:
        return given
    from pipeline.engines.models import cache_dir

    venv = cache_dir() / "curator-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making {venv} with {CURATOR} (once; ~900 MB) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", CURATOR], check=True)
    return str(python)


def ours(url: str, model: str, prompts: list[str], max_tokens: int, concurrency: int) -> tuple[float, int]:
    from pipeline.engines import EngineSpec, Sampling, chat, load_engine

    engine = load_engine(EngineSpec.make("openai-chat", model, base_url=url, options={
        "concurrency": concurrency, "max_concurrency": concurrency, "timeout": 600}))
    started = time.perf_counter()
    out = engine.generate([chat(p) for p in prompts], Sampling(max_tokens=max_tokens, temperature=0.0))
    return time.perf_counter() - started, sum(not c[0].failed for c in out)


def theirs(python: str, url: str, model: str, prompts: list[str], max_tokens: int, concurrency: int) -> tuple[float, int]:
    done = subprocess.run([python, "-c", CURATOR_RUN], input=json.dumps([url, model, prompts, max_tokens, concurrency]),
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["answered"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("vllm", "llamacpp"), default="vllm")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--curator-python")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    python = curator_python(args.curator_python)
    if args.server == "vllm":
        from vllmserver import VLLMServer

        server = VLLMServer().start()
    else:
        from pipeline.engines.llamacpp_server import LlamaServer

        server = LlamaServer().start()
    prompts = [f"In one sentence, what is interesting about the number {i}?" for i in range(args.n)]
    try:
        ours(server.url, "smollm2", prompts[:8], args.max_tokens, args.concurrency)  # warm the server up
        results = {"aligndata": [], "curator": []}
        for _ in range(args.rounds):
            for name in ("curator", "aligndata") if _ % 2 else ("aligndata", "curator"):
                run = ours(server.url, "smollm2", prompts, args.max_tokens, args.concurrency) if name == "aligndata" else \
                    theirs(python, server.url, "smollm2", prompts, args.max_tokens, args.concurrency)
                results[name].append(run)
    finally:
        server.stop()
    print(f"{args.n} requests, {args.concurrency} in flight, max_tokens {args.max_tokens}, {args.server} serve (SmolLM2), "
          f"{args.rounds} rounds alternating")
    rate = {}
    for name, runs in results.items():
        seconds = sum(s for s, _ in runs) / len(runs)
        rate[name] = args.n / seconds
        print(f"{name:>10}: {seconds:7.2f} s  {rate[name]:6.2f} requests/s  answered {[a for _, a in runs]}")
    print(f"aligndata / curator requests/s: {rate['aligndata'] / rate['curator']:.3f} (goal >= 1.0)")


if __name__ == "__main__":
    main()
