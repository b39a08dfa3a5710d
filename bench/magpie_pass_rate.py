"""Share of sampled Magpie instructions that pass the instruction filters (filters.MAGPIE_INSTRUCTION).

    python bench/magpie_pass_rate.py --engine vllm --n 200 --temperature 0.7
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import filters  # noqa: E402
from pipeline.synth import magpie  # noqa: E402
from pipeline.engines import EngineSpec, load_engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default="vllm")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--system", default=None, help="custom system prompt; default: the template's own (SmolLM2: its default system turn)")
    args = parser.parse_args()
    engine = load_engine(EngineSpec.make(args.engine, args.model))
    df = magpie.synthesize(magpie.plan(args.n, seed=args.seed), engine=engine, temperature=args.temperature, system=args.system)
    print(f"pre-query prefix: {magpie.pre_query(engine, system=args.system).prefix!r}")
    kept, drops = filters.apply(df, filters.MAGPIE_INSTRUCTION)
    print(f"engine={args.engine} n={args.n} T={args.temperature}: {kept.height}/{df.height} = {kept.height / df.height:.1%} pass; drops: {drops}")
    for text in kept["messages"].list.first().struct.field("content").head(5).to_list():
        print("  +", text[:120])


if __name__ == "__main__":
    main()
