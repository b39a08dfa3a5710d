"""The GPU path, checked on a CUDA host in one run: one table row per check (ok / FAIL / skip with the reason).

    bash bench/gpu_check.sh            # installs nothing; runs what this host can run
    python bench/gpu_check.py --quick  # smaller sizes

Checks (each independent; a missing package or model is a skip that says what is missing, not a failure):
- env: the GPU, torch/CUDA, and whether vllm and a GPU faiss are importable.
- quickstart-vllm: `aligndata run` (the README's main job) with `--engine vllm` on the GPU, rows and seconds.
- deita-scorers: the two published deita scorers (hkust-nlp/deita-complexity-scorer, -quality-scorer) on vLLM
  in turn, through `release_engines`: every row scored, and the GPU's free memory after each release back to within
  RELEASE_MARGIN of what it was before the first.
- repr-filter: deita's Repr Filter on CUDA (bf16 screen + fp32 check) against the CPU: identical selection.
- deita-embedder: `embed_causal_lm` on CUDA (bf16) against the CPU (fp32) on a random Llama of 7B's layer
  shape scaled down (weights are random: the check is placement, dtype, agreement and release, not quality);
  `release_models()` must return the allocator to its starting point.
- reward-classifier: `SequenceClassifierReward` on CUDA against the CPU, and its release.
- faiss-gpu: GPU faiss against CPU faiss on Magpie's 500-nearest search and the approximate semantic dedup (needs the
  faiss-gpu wheel).
- utilisation: bench/engine_utilisation.py at its defaults on vLLM (needs vllm); below UTILISATION_FLOOR is a failure.

A check that finds its package or model missing is a skip that says so; one that runs and raises, or whose memory
does not come back, is a failure.
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


UTILISATION_FLOOR = 0.95  # bench/engine_utilisation.py's target
RELEASE_MARGIN = 2**30  # free GPU memory after a release must come back to within this of the free memory before
TORCH_RELEASE_MARGIN = 2**20


def utilisation_ratios(output: str) -> list[float]:
    """The utilisation ratios bench/engine_utilisation.py printed (one per stage).

    >>> utilisation_ratios("magpie  bare 1.0 s   pipeline 1.1 s   utilisation (bare / pipeline) 0.909\\nrows: 4")
    [0.909]
    """
    import re

    return [float(m) for m in re.findall(r"utilisation \(bare / pipeline\) ([0-9.]+)", output)]


def vllm_checks(args, work: Path) -> None:
    if not has("vllm"):
        for check in ("quickstart-vllm", "deita-scorers", "utilisation"):
            row(check, "skip", "vllm is not installed on this host (its wheels exceed what a device call can carry; "
                               "the CPU suite's contract tests check vLLM's GPU configuration)")
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
    ratios = utilisation_ratios(done.stdout)
    ok = done.returncode == 0 and ratios and min(ratios) >= UTILISATION_FLOOR
    row("utilisation", "ok" if ok else "FAIL", f"exit {done.returncode}; bare / pipeline {ratios} (floor "
        f"{UTILISATION_FLOOR}): {((done.stdout + done.stderr).strip().splitlines() or [''])[-1][:160]}")


def model_available(model: str) -> bool:
    """A local directory, or a Hub id whose snapshot is in the local cache (this check never downloads)."""
    if Path(model).exists():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # noqa: BLE001 - not a repo id
        return False


def deita_scorers(args) -> None:
    """Both published scorers on vLLM in turn, at the lengths their configs allow: each scores real-length rows, and
    the GPU's free memory comes back after each release. A scorer that is not on this host is a skip; one that is
    and fails to load or score is a failure."""
    import torch

    from pipeline.engines import EngineSpec, load_engine, release_engines
    from pipeline.score import deita

    models = (args.complexity_scorer, args.quality_scorer)
    missing = [m for m in models if not model_available(m)]
    if missing:
        row("deita-scorers", "skip", f"not on this host: {missing} (pass --complexity-scorer/--quality-scorer DIR)")
        return
    scored = conversations(32)
    free_before = torch.cuda.mem_get_info()[0]
    details, ok = [], True
    try:
        for model, part in zip(models, ("complexity", "quality")):
            engine = load_engine(EngineSpec(backend="vllm", model=model))
            scored = deita.score(scored, engine=engine, part=part)  # quality reads the complexity column
            errors = scored["drop_reason"].drop_nulls().len()
            nulls = scored["complexity" if part == "complexity" else "deita_score"].null_count()
            loaded = torch.cuda.mem_get_info()[0]
            del engine
            release_engines(set())
            free_after = torch.cuda.mem_get_info()[0]
            back = free_after >= free_before - RELEASE_MARGIN
            ok = ok and back and errors == 0 and nulls == 0
            details.append(f"{part}: {errors} failed, {nulls} null; free GiB {free_before / 2**30:.1f} → loaded "
                           f"{loaded / 2**30:.1f} → released {free_after / 2**30:.1f}")
    except Exception as exc:  # noqa: BLE001 - the scorer is here and broke: a failure with its reason
        row("deita-scorers", "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        return
    row("deita-scorers", "ok" if ok else "FAIL", "; ".join(details))


def faiss_check(n: int) -> None:
    """GPU faiss against CPU faiss on the pipeline's own calls: Magpie's 500-nearest search and the approximate
    semantic dedup (kNN candidates on the GPU, range search on the CPU), same results, both timed."""
    from pipeline.select import neighbours

    if not neighbours.faiss_gpus():
        row("faiss-gpu", "skip", "no GPU faiss here (the faiss-gpu wheel is 135 MB: more than a device call carries)")
        return
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(n // 20, 384)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.12 * rng.normal(size=(n, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    timings = {}
    results = {}
    for where in ("gpu", "cpu"):
        os.environ["ALIGNDATA_FAISS_GPU"] = "1" if where == "gpu" else "0"
        started = time.perf_counter()
        results[where, "knn"] = neighbours.min_neighbor_distance(x, approximate=False)[1]
        timings[where, "knn"] = time.perf_counter() - started
        started = time.perf_counter()
        results[where, "dedup"] = neighbours.semantic_duplicates(x, 0.95, approximate=True)
        timings[where, "dedup"] = time.perf_counter() - started
    os.environ.pop("ALIGNDATA_FAISS_GPU", None)
    same_knn = float(np.mean(results["gpu", "knn"] == results["cpu", "knn"]))
    gpu_dups, cpu_dups = (int((results[w, "dedup"] >= 0).sum()) for w in ("gpu", "cpu"))
    ok = same_knn >= 0.99 and gpu_dups >= 0.99 * cpu_dups
    row("faiss-gpu", "ok" if ok else "FAIL", f"{n:,}×384: 500-NN repeat counts equal on {same_knn:.3f} of rows, "
        f"GPU {timings['gpu', 'knn']:.1f} s vs CPU {timings['cpu', 'knn']:.1f} s "
        f"({timings['cpu', 'knn'] / timings['gpu', 'knn']:.1f}×); dedup {gpu_dups:,} vs {cpu_dups:,} duplicates, GPU "
        f"{timings['gpu', 'dedup']:.1f} s vs CPU {timings['cpu', 'dedup']:.1f} s "
        f"({timings['cpu', 'dedup'] / timings['gpu', 'dedup']:.1f}×)")


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
                            ("reward-classifier", lambda: reward_check(tokenizer, work, 256)),
                            ("faiss-gpu", lambda: faiss_check(n))):
            tokenizer = tokenizer_dir(args)
            if name in ("deita-embedder", "reward-classifier") and tokenizer is None:
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
