"""deita scoring: one batched engine call per shard vs one call per sample (the official vLLM path), same
engine, same rows, one run. Prints rows/s for both and the ratio.

    python bench/deita_batched.py --engine vllm --n 64
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402

from pipeline.score import deita
from pipeline.synth import magpie  # noqa: E402
from pipeline.engines import EngineSpec, load_engine  # noqa: E402


def rows(n: int) -> pl.DataFrame:
    topics = ["sourdough bread", "binary search", "the French revolution", "tax returns", "marathon training",
              "photosynthesis", "SQL joins", "a wedding speech"]
    messages = [[{"role": "user", "content": f"Explain {topics[i % 8]} to a beginner, case {i}."},
                 {"role": "assistant", "content": f"Here is a short explanation of {topics[i % 8]} with an example ({i})."}]
                for i in range(n)]
    return magpie.plan(n, seed=0).with_columns(pl.Series("messages", messages, dtype=magpie.plan(1, seed=0).schema["messages"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="vllm")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    engine = load_engine(EngineSpec.make(args.engine, args.model))
    df = rows(args.n)
    deita.score(df.head(2), engine=engine)  # warm-up
    started = time.perf_counter()
    batched = deita.score(df, engine=engine)
    t_batched = time.perf_counter() - started
    started = time.perf_counter()
    single = pl.concat([deita.score(df.slice(i, 1), engine=engine) for i in range(df.height)])
    t_single = time.perf_counter() - started
    same = batched["deita_score"].round(3).to_list() == single["deita_score"].round(3).to_list()
    print(f"engine={args.engine} rows={args.n} (2 prompts each)  scores agree to 1e-3: {same}")
    print(f"batched: {args.n / t_batched:.2f} rows/s ({t_batched:.1f} s)   per-sample: {args.n / t_single:.2f} rows/s ({t_single:.1f} s)")
    print(f"speed-up batched / per-sample: {t_single / t_batched:.2f}x")


if __name__ == "__main__":
    main()
