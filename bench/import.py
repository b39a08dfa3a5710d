"""Import at scale: rows/s and peak RSS of `write_input` (what every input command runs) on a generated
ShareGPT-style JSON array, next to `json.load` of the same file (what reading it whole costs just to parse).

    python bench/import.py                 # ~1 GB file (made once under /tmp), goal: peak RSS < 2 GB
    python bench/import.py --gigabytes 0.1

Each side runs in a subprocess of its own so its peak RSS is its own (ru_maxrss of the child).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a of to and in is how what why explain write code list plan data model train loss python error fix "
         "table query answer step first then because example value result").split()

OURS = """
import sys, time
from pipeline.recipes import write_input
from pipeline.core.rundir import read_manifest
started = time.perf_counter()
write_input(sys.argv[2], sys.argv[1])
rows = sum(e["rows_in"] for e in read_manifest(sys.argv[2]) if e["stage"] == "input")
print(rows, time.perf_counter() - started)
"""
WHOLE = """
import json, sys, time
started = time.perf_counter()
rows = len(json.load(open(sys.argv[1], encoding="utf-8")))
print(rows, time.perf_counter() - started)
"""


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def make(path: Path, gigabytes: float) -> int:
    """A ShareGPT export: a JSON array of {id, conversations} with 2-6 turns, some rows broken as real ones are."""
    rng, target, rows = random.Random(0), int(gigabytes * 2**30), 0
    with open(path, "w", encoding="utf-8") as out:
        out.write("[")
        while out.tell() < target:
            turns = [{"from": "human" if i % 2 == 0 else "gpt", "value": sentence(rng, rng.randint(20, 300))}
                     for i in range(rng.choice((2, 2, 4, 6)))]
            if rows % 50 == 7:
                turns = []  # an empty conversation, quarantined
            elif rows % 3 == 1:
                turns = turns[1:]  # opens with the assistant
            out.write(("," if rows else "") + json.dumps({"id": f"row-{rows}", "conversations": turns}))
            rows += 1
        out.write("]")
    return rows


def measure(script: str, *args: str) -> tuple[int, float, float]:
    """(rows, seconds, peak RSS in GiB). RUSAGE_CHILDREN's maxrss is the largest child so far, so main() runs
    the side with the smaller footprint first."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    rows, seconds = done.stdout.split()
    return int(rows), float(seconds), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    args = parser.parse_args()
    path = Path(tempfile.gettempdir()) / f"aligndata-sharegpt-{args.gigabytes:g}GB.json"
    if not path.exists():
        started = time.perf_counter()
        print(f"writing {path} ...", file=sys.stderr)
        make(path, args.gigabytes)
        print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr)
    size = path.stat().st_size / 2**30
    with tempfile.TemporaryDirectory() as out:
        rows, ours_s, ours_gb = measure(OURS, str(path), str(Path(out) / "run"))
    _, whole_s, whole_gb = measure(WHOLE, str(path))
    print(f"file: {size:.2f} GiB, {rows} rows")
    print(f"{'':<34} {'seconds':>8} {'rows/s':>9} {'peak RSS GiB':>13}")
    print(f"{'aligndata write_input (batched)':<34} {ours_s:>8.1f} {rows / ours_s:>9.0f} {ours_gb:>13.2f}")
    print(f"{'json.load, parse only (whole file)':<34} {whole_s:>8.1f} {rows / whole_s:>9.0f} {whole_gb:>13.2f}")
    print(f"peak RSS ratio (ours / whole-file parse): {ours_gb / whole_gb:.2f}; goal: ours < 2 GiB -> "
          f"{'met' if ours_gb < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
