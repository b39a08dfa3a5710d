"""Magpie pipeline throughput ÷ bare engine throughput, measured side by side in one run.

Both sides make the same requests (same prompts, sampling and seeds) on the same loaded engine: the bare
side calls engine.generate directly; the pipeline side runs the Magpie stages through the run directory
(sharding, atomic Parquet, manifest, filters, export). Rounds alternate order to cancel drift.

    python bench/engine_utilisation.py --engine llamacpp --n 16
    python bench/engine_utilisation.py --engine vllm --n 64
Target: ratio >= 0.95.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.synth import magpie  # noqa: E402
from pipeline.engines import EngineSpec, Sampling, load_engine  # noqa: E402
from pipeline.recipes import magpie_job  # noqa: E402
from pipeline.core.records import meta_dicts  # noqa: E402


def bare(engine, n: int, seed: int, response_max_tokens: int) -> float:
    started = time.perf_counter()
    query = magpie.pre_query(engine)
    plan = magpie.plan(n, seed=seed)
    metas = meta_dicts(plan)
    ins = engine.generate([query.prefix] * n, Sampling(temperature=query.temperature, top_p=query.top_p, max_tokens=256,
                                                       stop=query.stop), magpie._row_seeds(metas, 1, "user"))
    prompts = [engine.template.render([{"role": "user", "content": c[0].text.strip()}]) for c in ins]
    engine.generate(prompts, Sampling(temperature=0.0, max_tokens=response_max_tokens,
                                      stop=tuple(engine.template.stop_strings())), magpie._row_seeds(metas, 1, "assistant"))
    return time.perf_counter() - started


def pipeline(spec, n: int, seed: int, response_max_tokens: int, shard_size: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        magpie_job(out, n=n, seed=seed, engine=spec, response_max_tokens=response_max_tokens, shard_size=shard_size)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="llamacpp")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--response-max-tokens", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=None, help="default: n (one engine call per stage)")
    args = parser.parse_args()
    spec = EngineSpec.make(args.engine, args.model)
    engine = load_engine(spec)
    bare(engine, 2, 999, 8)  # warm-up outside the measurement
    t_bare = t_pipe = 0.0
    for r in range(args.rounds):
        seed = 100 + r
        if r % 2 == 0:
            t_bare += bare(engine, args.n, seed, args.response_max_tokens)
            t_pipe += pipeline(spec, args.n, seed, args.response_max_tokens, args.shard_size or args.n)
        else:
            t_pipe += pipeline(spec, args.n, seed, args.response_max_tokens, args.shard_size or args.n)
            t_bare += bare(engine, args.n, seed, args.response_max_tokens)
    rows = args.n * args.rounds
    print(f"engine={args.engine} model={args.model} rows={rows} (instruction + response each)")
    print(f"bare engine : {rows / t_bare:7.3f} rows/s  ({t_bare:.1f} s)")
    print(f"pipeline    : {rows / t_pipe:7.3f} rows/s  ({t_pipe:.1f} s)")
    print(f"utilisation ratio (pipeline / bare): {t_bare / t_pipe:.3f}   target >= 0.95")


if __name__ == "__main__":
    main()
