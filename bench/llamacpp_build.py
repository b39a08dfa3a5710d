"""What the portable llama.cpp build costs: the installed build vs others on the same work, side by side.

    python bench/llamacpp_build.py                                 # installed vs a native build (built once, cached)
    python bench/llamacpp_build.py --candidate avx512=/path/llama_cpp_python-....whl

Each candidate is a llama-cpp-python wheel, unpacked and imported in a subprocess of its own (PYTHONPATH first),
on the same GGUF (SmolLM2-135M-Instruct Q4_1), the same prompts and seeds, with the engine's settings (n_ctx
2048, all cores): prefill (a ~500-token prompt, the scorers' and IFD's case) and Magpie decoding (pre-query
prompt, 128 tokens, seeded). Rounds alternate between candidates; medians are printed with the ratio to the
installed build. A native build on an AMX CPU crashes: its row then says so.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NATIVE_ARGS = "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF"
VERSION = "0.3.36"

CHILD = r"""
import json, os, sys, time
import llama_cpp
gguf, rounds = sys.argv[1], int(sys.argv[2])
llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_threads=os.cpu_count(), logits_all=True, verbose=False)
prefix = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
long_prompt = prefix + " ".join(f"word{i % 97}" for i in range(250)) + "<|im_end|>\n"
tokens = llm.tokenize(long_prompt.encode(), add_bos=False, special=True)
prefill, decode, generated = [], [], 0
for r in range(rounds):
    llm.reset(); t = time.perf_counter(); llm.eval(tokens); prefill.append(len(tokens) / (time.perf_counter() - t))
    llm.reset(); t = time.perf_counter()
    out = llm.create_completion(prefix, max_tokens=128, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=r,
                                repeat_penalty=1.0)
    n = out["usage"]["completion_tokens"]; generated += n; decode.append(n / (time.perf_counter() - t))
features = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"prefill": prefill, "decode": decode, "generated": generated, "prompt_tokens": len(tokens),
                  "features": features}))
"""


def unpack(wheel: Path, into: Path) -> Path:
    target = into / wheel.stem
    if not target.exists():
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return target


def installed_wheel_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parents[1]


def native_wheel() -> Path:
    """A native build of the same version, built once into the aligndata wheel cache."""
    from pipeline.engines.models import cache_dir

    out = cache_dir() / "wheels" / "llama-cpp-bench-native"
    wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    if not wheels:
        print(f"building a native llama-cpp-python {VERSION} ({NATIVE_ARGS}) into {out} (~4 min) ...", file=sys.stderr)
        env = dict(os.environ, CMAKE_ARGS=NATIVE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count()))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "-w", str(out),
                        f"llama-cpp-python=={VERSION}"], check=True, env=env)
        wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    return wheels[0]


def run(path: Path, gguf: str, rounds: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", CHILD, gguf, str(rounds)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir(), timeout=900)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode} (negative: killed by that signal)"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", action="append", default=[], help="NAME=WHEEL (repeatable); default: native")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each runs every candidate once")
    parser.add_argument("--per-round", type=int, default=3, help="prefill and decode repetitions per process")
    args = parser.parse_args()
    from pipeline.engines.selftest import compiled_features
    from pipeline.engines.models import smollm2_gguf

    gguf = str(smollm2_gguf())
    scratch = Path(tempfile.mkdtemp(prefix="llamacpp-bench-"))
    candidates = {"installed": installed_wheel_dir()}
    for item in args.candidate or [f"native={native_wheel()}"]:
        name, _, wheel = item.partition("=")
        candidates[name] = unpack(Path(wheel), scratch)
    results: dict[str, dict] = {name: {"prefill": [], "decode": []} for name in candidates}
    for _ in range(args.rounds):
        for name, path in candidates.items():
            out = run(path, gguf, args.per_round)
            if "error" in out:
                results[name]["error"] = out["error"]
                continue
            results[name]["prefill"] += out["prefill"]
            results[name]["decode"] += out["decode"]
            results[name]["features"] = " ".join(sorted(f for f in compiled_features(out["features"])
                                                        if f.startswith(("AVX", "AMX", "FMA", "F16C"))))
    base = {k: statistics.median(results["installed"][k]) for k in ("prefill", "decode")}
    print(f"{'build':<12} {'prefill tok/s':>14} {'ratio':>6} {'decode tok/s':>13} {'ratio':>6}  compiled with")
    for name, r in results.items():
        if "error" in r and not r["prefill"]:
            print(f"{name:<12} {r['error']}")
            continue
        prefill, decode = statistics.median(r["prefill"]), statistics.median(r["decode"])
        print(f"{name:<12} {prefill:>14.1f} {prefill / base['prefill']:>6.2f} {decode:>13.1f} {decode / base['decode']:>6.2f}"
              f"  {r.get('features', '')}")


if __name__ == "__main__":
    main()
