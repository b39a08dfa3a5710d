"""Self-alignment jobs: URIAL answers from a base model, Alignment-for-Honesty "I don't know" data from a model's own correctness, and I-SHEEP's
generate → self-assess → train loop, and Guide-Align's guideline library and guided answers."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from pipeline.core.codehash import code_hash
from pipeline.core.inputs import content_hash, write_input
from pipeline.core.records import record_id
from pipeline.core.rundir import check_identity, summarize, write_atomic, write_shard
from pipeline.engines import EngineSpec
from pipeline.engines.models import resolve_model
from pipeline.recipes.steps import Progress, Step, export_parquet, input_job, run_job, run_steps
from pipeline.ship.train import TrainHook
from pipeline.synth import isheep

SEED_TASKS = Path(isheep.__file__).parent / "data" / "isheep_seed_tasks.jsonl"


def honesty_steps(*, method: str = "absolute", m: int = 10, answers_column: str | None = None,
                  matcher: str = "contains", max_tokens: int = 64, shard_size: int = 32) -> list[Step]:
    """Greedy + m sampled answers, labeled against the gold answers → the method's SFT rows."""
    from pipeline.synth.honesty import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown honesty method {method!r}; valid: {list(METHODS)}")
    return [Step("answered", "pipeline.synth.honesty:answer", {"m": m, "answers_column": answers_column,
                                                               "matcher": matcher, "max_tokens": max_tokens},
                 shard_size=shard_size),
            Step(f"honesty-{method}", "pipeline.synth.honesty:build_stage", {"method": method}, uses_engine=False,
                 shard_size=None)]


def urial_step(*, max_tokens: int = 1024, shard_size: int = 32) -> Step:
    """URIAL answers from a base model (pipeline.synth.urial_answers.answer)."""
    return Step("urial", "pipeline.synth.urial_answers:answer", {"max_tokens": max_tokens}, shard_size=shard_size)


def urial_job(out: Path, *, input_path: Path, engine: EngineSpec, max_tokens: int = 1024, shard_size: int = 32,
              strict: bool = False, salvage: bool = False, max_failure_rate: float = 0.1,
              on_progress: Progress | None = None) -> dict:
    """URIAL answers from a base model for the conversations at `input_path` (1 and more turns) into `out`."""
    return input_job(out, input_path=input_path, engine=engine, strict=strict, salvage=salvage,
                     steps=[urial_step(max_tokens=max_tokens, shard_size=shard_size)],
                     max_failure_rate=max_failure_rate, on_progress=on_progress)


def honesty_job(out: Path, *, input_path: Path, engine: EngineSpec, strict: bool = False, salvage: bool = False,
                max_failure_rate: float = 0.1, on_progress: Progress | None = None, **step_options) -> dict:
    """Honesty SFT data from the questions at `input_path` into `out`."""
    return input_job(out, input_path=input_path, steps=honesty_steps(**step_options), engine=engine, strict=strict,
                     salvage=salvage, max_failure_rate=max_failure_rate, on_progress=on_progress)


def isheep_steps(*, max_tokens: int = 1024, assess_max_tokens: int = 64, min_score: int = 9,
                 shard_size: int = 32) -> list[Step]:
    """One I-SHEEP iteration after its plan: new tasks → cleanup and dedup → answers → self-assessment → the
    both-scores filter."""
    return [Step("tasks", "pipeline.synth.isheep:self_instruct", {"max_tokens": max_tokens}, shard_size=shard_size),
            Step("tasks-filtered", "filters:mark", {"spec": ["unique_instruction"]}, uses_engine=False, shard_size=None),
            Step("answered", "pipeline.synth.isheep:answer", {"max_tokens": max_tokens}, shard_size=shard_size),
            Step("assessed", "pipeline.synth.isheep:self_assess", {"max_tokens": assess_max_tokens},
                 shard_size=shard_size, computes=("self_quality", "self_following")),
            Step("selected", "filters:mark", {"spec": [{"name": "self_assessed_at_least", "min_score": min_score}]},
                 uses_engine=False, shard_size=None)]


def read_seed_tasks(path: Path | None) -> list[str]:
    """The seed tasks (first user turns) of `path` in any input format, or the bundled seed file."""
    from pipeline.core import inputs

    source = Path(path) if path else SEED_TASKS
    return [turns[0]["content"] for turns in inputs.load(source, strict=False)["messages"].to_list() if turns]


def write_isheep_plan(out: Path, *, n: int, seed: int, seed_tasks: list[str], iteration: int) -> Path:
    """DIR/plan/shard-00000.parquet: the iteration's `n` rows, each with its seed tasks drawn (identity: n, seed,
    iteration, the seed tasks)."""
    plan_dir = Path(out) / "plan"
    check_identity(plan_dir, {"stage": "plan", "code": code_hash(isheep.plan), "n": n, "seed": seed,
                              "iteration": iteration, "seed_tasks": record_id("seeds", *seed_tasks)})
    if not (plan_dir / "shard-00000.parquet").exists():
        write_shard(isheep.plan(n, seed=seed, seed_tasks=seed_tasks, iteration=iteration), plan_dir / "shard-00000.parquet")
    return plan_dir


IterationRunner = Callable[[Path, list[Step], Callable[[Path], Path], EngineSpec, str], dict]
"""(iteration directory, steps, writer of the plan stage, engine, card title) -> summarize() plus `export`."""


def isheep_job(out: Path, *, n: int, seed: int, engine: EngineSpec, iterations: int = 2, seeds: Path | None = None,
               train: TrainHook | None = None, run_iteration: IterationRunner | None = None, max_failure_rate: float = 0.1,
               on_progress: Progress | None = None, **step_options) -> dict:
    """I-SHEEP's loop into `out`: iteration i runs `isheep_steps` with the model M_i into OUT/iter-i (M_1 is the
    engine's model), then `train(base, OUT/iter-i/export/data.parquet, OUT/iter-i/model)` makes M_{i+1} from the
    *base* model and iteration i's data only (the paper's best setting). The default hook is LoRA SFT merged into
    the weights (pipeline/ship/train.py); `run_iteration` runs an iteration's steps (default in-process; the Prefect
    flow passes tasks). Every iteration resumes: finished stages and a saved model are reused.
    Writes OUT/isheep.json (per iteration: model, rows, kept, mean self-scores); returns the stages' summary
    (keyed `iteration:stage`) with that report under `isheep`."""
    from pipeline.ship.train import lora_sft

    if iterations > 1 and engine.backend == "llamacpp":
        raise ValueError("I-SHEEP's later iterations generate with the trained checkpoint (an HF directory), which "
                         "llama.cpp cannot load: use --engine vllm")
    train = train or lora_sft
    run_iteration = run_iteration or (lambda d, steps, source, spec, card: run_job(
        d, steps, source, engine=spec, card=card, max_failure_rate=max_failure_rate, on_progress=on_progress))
    seed_tasks = read_seed_tasks(seeds)
    base = resolve_model(engine.backend, engine.model)
    model, history, stages, exports, started = engine.model, [], {}, {}, time.perf_counter()
    for iteration in range(1, iterations + 1):
        it_dir = Path(out) / f"iter-{iteration}"
        summary = run_iteration(it_dir, isheep_steps(**step_options),
                                lambda d, i=iteration: write_isheep_plan(d, n=n, seed=seed, seed_tasks=seed_tasks, iteration=i),
                                replace(engine, model=model), f"I-SHEEP iteration {iteration}")
        stages |= {f"{iteration}:{name}": s for name, s in summary["stages"].items()}
        exports[f"iter-{iteration}"] = summary["export"]
        history.append({"iteration": iteration, "model": model, **self_scores(it_dir), "export": summary["export"]})
        model = train(base, Path(summary["export"]), it_dir / "model")
        history[-1]["trained"] = model
    report = {"method": "isheep", "base": engine.model, "iterations": history}
    write_atomic(Path(out) / "isheep.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return {"stages": stages, "export": exports, "seconds": round(time.perf_counter() - started, 1), "isheep": report,
            "manifest": str(Path(out) / "iter-*" / "manifest.jsonl")}


def self_scores(run_dir: Path) -> dict:
    """Rows assessed and kept in a finished iteration, with the mean self-scores of each."""
    import polars as pl

    from pipeline.core.rundir import read_shards

    assessed = read_shards(Path(run_dir) / "assessed").filter(pl.col("drop_reason").is_null())
    kept = read_shards(Path(run_dir) / "selected").filter(pl.col("drop_reason").is_null())

    def means(df):
        return {c: (round(float(df[c].mean()), 2) if df.height else None) for c in ("self_quality", "self_following")}

    return {"assessed": assessed.height, "kept": kept.height, "assessed_mean": means(assessed), "kept_mean": means(kept)}



def guideline_library_steps(*, per_input: int = 3, threshold: float = 0.9, embedder: str = "minilm",
                            shard_size: int = 32) -> list[Step]:
    """Guide-Align's library: guidelines written per input, then deduplicated into the library stage."""
    return [Step("guidelines-written", "pipeline.synth.guide_align:write_guidelines", {"per_input": per_input},
                 shard_size=shard_size),
            Step("library", "pipeline.select.guide_library:build_library", {"threshold": threshold, "embedder": embedder},
                 uses_engine=False, shard_size=None)]


def guided_step(library: Path, *, k: int = 3, max_tokens: int = 1024, shard_size: int = 32) -> Step:
    """Guide-Align's answers with the top-k guidelines of the library file at `library` (its content is part of the
    step's identity)."""
    library = Path(library).resolve()
    return Step("guided", "pipeline.synth.guide_align:answer_with_guidelines",
                {"library": str(library), "library_sha": content_hash(library), "k": k, "max_tokens": max_tokens},
                shard_size=shard_size)


def guide_align_job(out: Path, *, input_path: Path, engine: EngineSpec, library: Path | None = None, k: int = 3,
                    per_input: int = 3, threshold: float = 0.9, embedder: str = "minilm", max_tokens: int = 1024,
                    shard_size: int = 32, strict: bool = False, salvage: bool = False, max_failure_rate: float = 0.1,
                    on_progress: Progress | None = None) -> dict:
    """Guide-Align over the inputs at `input_path` into `out`: unless `library` (a guideline library Parquet file from
    an earlier run) is given, the model writes guidelines for every input and they are deduplicated into
    OUT/export/guidelines.parquet; then each input is answered with its top-`k` guidelines (OUT/export/data.parquet)."""
    started = time.perf_counter()
    source = write_input(out, input_path, strict=strict, salvage=salvage)
    run = dict(engine=engine, max_failure_rate=max_failure_rate, on_progress=on_progress)
    exports = {}
    if library is None:
        steps = guideline_library_steps(per_input=per_input, threshold=threshold, embedder=embedder, shard_size=shard_size)
        library = exports["guidelines"] = export_parquet(out, run_steps(out, steps, source, **run), name="guidelines")
    last = run_steps(out, [guided_step(library, k=k, max_tokens=max_tokens, shard_size=shard_size)], source, **run)
    exports["data"] = export_parquet(out, last, card="Guide-Align guided responses")
    return summarize(out) | {"export": {name: str(path) for name, path in exports.items()},
                             "seconds": round(time.perf_counter() - started, 1)}
