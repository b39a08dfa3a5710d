"""The self-alignment flows: I-SHEEP (iterations as cached tasks, the training step as a task) and Guide-Align."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.tasks import engine_json, input_task, run_steps
from pipeline import recipes
from pipeline.core.rundir import summarize
from pipeline.engines import EngineSpec
from pipeline.ship.train import LoraSettings, lora_sft
from pipeline.core.rundir import writer_lock


@task(cache_policy=NO_CACHE, task_run_name="train-{out}")
def train_task(base: str, data: str, out: str, settings: dict) -> str:
    """LoRA SFT of `base` on `data`, merged (lora_sft resumes on its own: a saved model is reused)."""
    return lora_sft(base, Path(data), Path(out), LoraSettings(**settings))


@flow(name="isheep")
def isheep_flow(out: str, n: int = 64, seed: int = 0, iterations: int = 2, seeds: str | None = None,
                engine: dict | None = None, options: dict | None = None, train: dict | None = None,
                max_failure_rate: float = 0.1, gpus: float = 0.0) -> dict:
    """I-SHEEP into `out` (recipes.isheep_job's loop); returns its report (per iteration: model, kept rows, mean
    self-scores). `options` are recipes.isheep_steps' keyword arguments (min_score, max_tokens, ...), `train`
    LoraSettings' fields (e.g. {max_steps: 10}), `engine` EngineSpec.make's keyword arguments (default SmolLM2 on vLLM)."""
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused

        def run_iteration(it_dir: Path, steps, source, spec: EngineSpec, card: str) -> dict:
            it_dir.mkdir(parents=True, exist_ok=True)
            last = run_steps(str(it_dir), steps, str(source(it_dir)), engine=spec.to_json(), max_failure_rate=max_failure_rate,
                             gpus=gpus)
            return summarize(it_dir) | {"export": str(recipes.export_parquet(it_dir, Path(last), card=card))}

        spec = EngineSpec.from_json(engine_json(engine))
        summary = recipes.isheep_job(Path(out), n=n, seed=seed, engine=spec, iterations=iterations,
                                     seeds=Path(seeds) if seeds else None, run_iteration=run_iteration,
                                     train=lambda base, data, to: train_task(base, str(data), str(to), train or {}),
                                     max_failure_rate=max_failure_rate, **(options or {}))
        return summary["isheep"]


@flow(name="guide-align")
def guide_align_flow(out: str, input_path: str, engine: dict | None = None, library: str | None = None,
                     options: dict | None = None, max_failure_rate: float = 0.1, gpus: float = 0.0) -> dict:
    """Guide-Align into `out` as tasks: the guideline library (unless `library` names one from an earlier run), then
    the guided answers; returns {"guidelines": library path, "data": export path}. `options`: per_input, threshold,
    embedder (the library) and k, max_tokens (the answers), shard_size (both)."""
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused
        options, spec = dict(options or {}), engine_json(engine)
        shard = {"shard_size": options["shard_size"]} if "shard_size" in options else {}
        source = input_task.submit(out, input_path).result()
        if library is None:
            steps = recipes.guideline_library_steps(**{k: v for k, v in options.items() if k in ("per_input", "threshold", "embedder")}, **shard)
            last = run_steps(out, steps, source, engine=spec, max_failure_rate=max_failure_rate, gpus=gpus)
            library = str(recipes.export_parquet(Path(out), Path(last), name="guidelines"))
        guided = recipes.guided_step(Path(library), **{k: v for k, v in options.items() if k in ("k", "max_tokens")}, **shard)
        last = run_steps(out, [guided], source, engine=spec, max_failure_rate=max_failure_rate, gpus=gpus)
        return {"guidelines": library, "data": str(recipes.export_parquet(Path(out), Path(last), card="Guide-Align guided responses"))}
