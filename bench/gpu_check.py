"""The GPU path, checked on a CUDA host in one run: one table row per check (ok / FAIL / skip with the reason).

    bash bench/gpu_check.sh            # installs nothing; runs what this host can run
    python bench/gpu_check.py --quick  # smaller sizes

Checks (each independent; a missing package or model is a skip that says what is missing, not a failure):
- env: the GPU, torch/CUDA, and whether vllm and a GPU faiss are importable.
- quickstart-vllm: `aligndata run` (the README's main job) with `--engine vllm` on the GPU, rows and seconds.
- deita-scorers: the two published deita scorers (hkust-nlp/deita-complexity-scorer, -quality-scorer) on vLLM
  in turn, through `release_engines`; the GPU's free memory after the first is released must come back.
- repr-filter: deita's Repr Filter on CUDA (bf16 screen + fp32 check) against the CPU: identical selection.
- deita-embedder: `embed_causal_lm` on CUDA (bf16) against the CPU (fp32) on a random Llama of 7B's layer
  shape scaled down (weights are random: the check is placement, dtype, agreement and release, not quality);
  `release_models()` must return the allocator to its starting point.
- reward-classifier: `SequenceClassifierReward` on CUDA against the CPU, and its release.
- utilisation: bench/engine_utilisation.py at its defaults on vLLM (needs vllm).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
ROWS: list[tuple[str, str, str]] = []


def row(check: str, status: str, detail: str) -> None:
    ROWS.append((check, status, detail))
    print(f"| {check} | {status} | {detail} |", flush=True)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def env() -> None:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    faiss_gpus = 0
    if has("faiss"):
        import faiss

        faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    row("env", "ok" if gpu != "none" else "FAIL", f"GPU {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
        f"vllm {'yes' if has('vllm') else 'no'}; faiss GPUs {faiss_gpus}")


def tokenizer_dir(args) -> Path | None:
    """A directory with SmolLM2's tokenizer files: --tokenizer, else the local dequantized SmolLM2."""
    if args.tokenizer:
        return Path(args.tokenizer)
    try:
        from pipeline.engines.models import smollm2_hf_dir

        return smollm2_hf_dir()
    except Exception:  # noqa: BLE001 - no offline model here: the checks that need a tokenizer skip
        return None


def random_llama(tokenizer: Path, out: Path, *, classifier: bool, hidden: int, layers: int) -> Path:
    """A random-weight Llama (causal LM or 1-label classifier) with `tokenizer`, saved to `out`."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = (LlamaForSequenceClassification if classifier else LlamaForCausalLM)(config)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, out / name)
    return out


def conversations(n: int):
    import polars as pl

    rng = np.random.default_rng(0)
    words = "the model data answer question explain code list write short story plan compare why how step".split()
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(words, size=int(rng.integers(8, 60))))
        a = " ".join(rng.choice(words, size=int(rng.integers(20, 300))))
        rows.append({"id": str(i), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return pl.DataFrame(rows)


def released(before: int) -> tuple[bool, str]:
    import torch

    after = torch.cuda.memory_allocated()
    return after <= before + (1 << 20), f"allocated {before / 2**20:.0f} → {after / 2**20:.0f} MiB after release"


def repr_filter_check(n: int, k: int) -> None:
    import torch

    from pipeline.select.selection import repr_filter

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(n // 50, 384)).astype(np.float32)  # ~50 near-duplicates (cos ~0.94) per center
    x = centers[rng.integers(0, len(centers), n)] + 0.25 * rng.normal(size=(n, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = rng.random(n)
    repr_filter(x[:4096], scores[:4096], k=64, device="cuda")  # warm-up (CUDA context, kernels)
    torch.cuda.synchronize()
    started = time.perf_counter()
    on_gpu = repr_filter(x, scores, k=k, device="cuda")
    gpu_s = time.perf_counter() - started
    started = time.perf_counter()
    on_cpu = repr_filter(x, scores, k=k, device="cpu")
    cpu_s = time.perf_counter() - started
    same = np.array_equal(on_gpu, on_cpu)
    row("repr-filter", "ok" if same else "FAIL", f"{n:,}×384 → k={k:,}: {len(on_gpu):,} kept, identical={same}; "
        f"CUDA {gpu_s:.2f} s, CPU {cpu_s:.2f} s ({cpu_s / gpu_s:.1f}×)")


def embedder_check(tokenizer: Path, work: Path, n: int) -> None:
    import torch

    from pipeline.score import embed

    model = random_llama(tokenizer, work / "embedder", classifier=False, hidden=1024, layers=8)
    df = conversations(n)
    before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    on_gpu = embed.matrix(embed.embed_causal_lm(df, model=str(model), batch_size=16, device="cuda"))
    gpu_s = time.perf_counter() - started
    embed.release_models()
    ok_release, release_detail = released(before)
    started = time.perf_counter()
    on_cpu = embed.matrix(embed.embed_causal_lm(df, model=str(model), batch_size=16, device="cpu"))
    cpu_s = time.perf_counter() - started
    embed.release_models()
    cosine = float((on_gpu * on_cpu).sum(1).min())
    ok = ok_release and cosine >= 0.98
    row("deita-embedder", "ok" if ok else "FAIL", f"{n} conversations, bf16 CUDA vs fp32 CPU min cosine {cosine:.4f}; "
        f"CUDA {gpu_s:.2f} s, CPU {cpu_s:.2f} s; {release_detail}")


def reward_check(tokenizer: Path, work: Path, n: int) -> None:
    import torch

    from pipeline.score import reward

    model = random_llama(tokenizer, work / "reward", classifier=True, hidden=1024, layers=8)
    pairs = [(m[0]["content"], m[1]["content"]) for m in conversations(n)["messages"].to_list()]
    before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    on_gpu, _ = reward.SequenceClassifierReward(str(model), device="cuda", batch_size=16).score(pairs)
    gpu_s = time.perf_counter() - started
    reward.release_models()
    ok_release, release_detail = released(before)
    on_cpu, _ = reward.SequenceClassifierReward(str(model), device="cpu", batch_size=16).score(pairs)
    correlation = float(np.corrcoef(on_gpu, on_cpu)[0, 1])
    ok = ok_release and correlation >= 0.98 and all(np.isfinite(on_gpu))
    row("reward-classifier", "ok" if ok else "FAIL", f"{n} pairs, CUDA bf16 vs CPU fp32 correlation {correlation:.4f}; "
        f"CUDA {gpu_s:.2f} s; {release_detail}")


def vllm_checks(args, work: Path) -> None:
    if not has("vllm"):
        for check in ("quickstart-vllm", "deita-scorers", "utilisation"):
            row(check, "skip", "vllm is not installed on this host")
        return
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--out", str(work / "quickstart"), "--engine", "vllm"],
                          cwd=ROOT, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    row("quickstart-vllm", "ok" if done.returncode == 0 else "FAIL", f"exit {done.returncode} in "
        f"{time.perf_counter() - started:.0f} s: {tail[0][:160]}")
    deita_scorers(args)
    done = subprocess.run([sys.executable, "bench/engine_utilisation.py", "--engine", "vllm", "--n", "256"], cwd=ROOT,
                          capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    row("utilisation", "ok" if done.returncode == 0 else "FAIL", tail[0][:200])


def deita_scorers(args) -> None:
    import torch

    from pipeline.engines import EngineSpec, load_engine, release_engines
    from pipeline.score import deita

    specs = [EngineSpec(backend="vllm", model=m) for m in (args.complexity_scorer, args.quality_scorer)]
    pool = conversations(32)
    free = []
    try:
        for spec in specs:
            engine = load_engine(spec)
            scored = deita.score(pool, engine=engine)
            free.append(torch.cuda.mem_get_info()[0])
            release_engines(set())
            free.append(torch.cuda.mem_get_info()[0])
            del engine, scored
    except Exception as exc:  # noqa: BLE001 - a scorer that is not on this host is a skip with the reason
        row("deita-scorers", "skip", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return
    back = free[1] >= free[0] and free[3] >= free[2]
    row("deita-scorers", "ok" if back else "FAIL", "free GiB loaded/released: " +
        ", ".join(f"{f / 2**30:.1f}" for f in free))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--tokenizer", help="a directory with SmolLM2's tokenizer files (default: the local model)")
    parser.add_argument("--complexity-scorer", default="hkust-nlp/deita-complexity-scorer")
    parser.add_argument("--quality-scorer", default="hkust-nlp/deita-quality-scorer")
    args = parser.parse_args()
    import torch

    print("| check | status | detail |\n| --- | --- | --- |", flush=True)
    env()
    if not torch.cuda.is_available():
        return
    n, k = (50_000, 5_000) if args.quick else (200_000, 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, check in (("repr-filter", lambda: repr_filter_check(n, k)),
                            ("deita-embedder", lambda: embedder_check(tokenizer, work, 128)),
                            ("reward-classifier", lambda: reward_check(tokenizer, work, 256))):
            tokenizer = tokenizer_dir(args)
            if name != "repr-filter" and tokenizer is None:
                row(name, "skip", "no tokenizer: pass --tokenizer DIR (SmolLM2's tokenizer files)")
                continue
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others' rows
                row(name, "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        vllm_checks(args, work)
    failed = [r[0] for r in ROWS if r[1] == "FAIL"]
    print(f"\n{len(ROWS)} checks: {len(failed)} failed {failed if failed else ''}".rstrip(), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
