"""`aligndata plan` against the run it predicts: plan a job on its sample, run the whole job, and print predicted vs
actual per stage (rows out, tokens, seconds) with actual / predicted.

    python bench/plan_accuracy.py                       # magpie on llama.cpp (SmolLM2), 96 rows, shards of 8
    python bench/plan_accuracy.py --n 256 --engine vllm
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--engine", default="llamacpp")
    parser.add_argument("--shard-size", type=int, default=8)
    args = parser.parse_args()
    from pipeline.recipes.plan import compare

    job = ["magpie", "--n", str(args.n), "--engine", args.engine, "--shard-size", str(args.shard_size)]
    aligndata = str(Path(sys.executable).with_name("aligndata"))
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "plan.json"
        subprocess.run([aligndata, "plan", *job, "--plan-dir", f"{tmp}/sample", "--save", str(saved)], check=True,
                       capture_output=True)
        subprocess.run([aligndata, *job, "--out", f"{tmp}/run"], check=True, capture_output=True)
        rows = compare(json.loads(saved.read_text())["stages"], Path(tmp) / "run")
    print(f"{' '.join(job)}: plan on {2 * args.shard_size} rows, then the run")
    print(f"{'stage':>22} {'rows out':>18} {'tokens':>26} {'seconds':>22}")
    for r in rows:
        cells = [f"{r[k + '_predicted']} → {r[k + '_actual']} ({r[k + '_ratio']})" for k in ("rows_out", "tokens", "seconds")]
        print(f"{r['stage']:>22} {cells[0]:>18} {cells[1]:>26} {cells[2]:>22}")


if __name__ == "__main__":
    main()
