"""Prefect's overhead: the curate flow (one task per step, cache records and results persisted) vs the same
steps called directly with recipes.run_steps, on the same 10k rows, in one process. Prints both times and the ratio.

The deita scorer is the fake engine by default, so the stage work is the same in both runs and small next to
a real scorer's (pass --engine vllm for SmolLM2: slow on CPU). Embeddings are the real MiniLM. The ephemeral
Prefect API is started before timing (a warm-up flow); its one-time start is printed separately.

    python bench/prefect_overhead.py --rows 10000
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    """n conversations from random topic/verb/detail combinations, 2% exact duplicates."""
    rng = random.Random(seed)
    verbs = ["Explain", "Summarize", "Compare", "Write a poem about", "Give three tips on", "Debug", "Plan", "Describe"]
    topics = ["binary search", "sourdough", "tax returns", "photosynthesis", "SQL joins", "a wedding speech", "black holes",
              "marathon training", "the French revolution", "prime numbers", "Rust lifetimes", "watercolor painting"]
    details = ["for a child", "in one paragraph", "with an example", "for an expert", "step by step", "in French"]
    lines = []
    for i in range(n):
        if i and rng.random() < 0.02:
            lines.append(lines[rng.randrange(len(lines))])
            continue
        question = f"{rng.choice(verbs)} {rng.choice(topics)} {rng.choice(details)} (case {rng.randrange(10**6)})."
        lines.append(json.dumps({"messages": [{"role": "user", "content": question},
                                              {"role": "assistant", "content": f"An answer to: {question}"}]}))
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--engine", default="fake")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from prefect import flow

    from flows.curate import curate_flow
    from pipeline import recipes
    from pipeline.engines import EngineSpec

    engine = {"backend": args.engine, "model": "smollm2" if args.engine != "fake" else "bench"}
    options = {"k": args.rows // 10, "tau": 0.9}
    root = Path(tempfile.mkdtemp(prefix="prefect_overhead_"))
    data = root / "data.jsonl"
    write_rows(data, args.rows)
    warm = root / "warm.jsonl"
    write_rows(warm, 64, seed=1)

    def direct(out: Path) -> float:
        started = time.perf_counter()
        source = recipes.write_input(out, data)
        recipes.run_steps(out, recipes.curate_steps(**options), source, engine=EngineSpec.make(**engine))
        return time.perf_counter() - started

    def flowed(out: Path) -> float:
        started = time.perf_counter()
        curate_flow(out=str(out), input_path=str(data), engine=engine, options=options)
        return time.perf_counter() - started

    started = time.perf_counter()
    flow(name="warm-up")(lambda: None)()
    server_start = time.perf_counter() - started
    # load the embedding model and the engine once, outside the timings
    recipes.run_steps(root / "warm", recipes.curate_steps(k=8), recipes.write_input(root / "warm", warm), engine=EngineSpec.make(**engine))

    times = {"direct": [], "flow": []}
    for repeat in range(args.repeats):
        times["direct"].append(direct(root / f"direct-{repeat}"))
        times["flow"].append(flowed(root / f"flow-{repeat}"))
    d, f = statistics.median(times["direct"]), statistics.median(times["flow"])
    print(f"rows={args.rows} engine={args.engine} steps={len(recipes.curate_steps(**options))} repeats={args.repeats}")
    print(f"direct stages: {d:.2f} s  {[round(t, 2) for t in times['direct']]}")
    print(f"curate flow:   {f:.2f} s  {[round(t, 2) for t in times['flow']]}")
    print(f"ratio flow/direct: {f / d:.3f} (target <= 1.10)")
    print(f"one-time ephemeral Prefect API start (not in the ratio): {server_start:.1f} s")


if __name__ == "__main__":
    main()
