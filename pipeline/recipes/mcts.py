"""The MCTS job: the instruction search over seed rows, then SFT, DPO and step datasets from its trees."""
from __future__ import annotations

import time
from pathlib import Path

from pipeline.core.rundir import summarize
from pipeline.engines import EngineSpec
from pipeline.recipes.steps import Progress, Step, export_parquet, run_steps, write_input


def mcts_search_step(*, iterations: int = 20, exploration: float = 1.0, responses: int = 3,
                     reward_model_path: str | None = None, optimizer: EngineSpec | None = None,
                     responder: EngineSpec | None = None, responder_format: str = "chat", response_max_tokens: int = 512,
                     shard_size: int = 16) -> Step:
    """MCTS instruction search over seed rows; the runner keeps each shard's trees in DIR/trees/state-*.json,
    saved every iteration. `optimizer` and `responder` default to the job's engine."""

    return Step("trees", "pipeline.synth.mcts:search_stage", {
        "iterations": iterations, "exploration": exploration, "responses": responses,
        "reward_model_path": reward_model_path, "responder_format": responder_format,
        "response_max_tokens": response_max_tokens}, shard_size=shard_size,
        engines={role: spec.to_json() for role, spec in (("optimizer", optimizer), ("responder", responder)) if spec})


MCTS_DATASETS = {"sft": "sft_rows", "dpo": "dpo_rows", "steps": "step_rows"}


def mcts_dataset_step(name: str) -> Step:
    """The step that builds one dataset (sft, dpo or steps) from the search's trees."""

    return Step(f"mcts-{name}", f"pipeline.synth.mcts:{MCTS_DATASETS[name]}", uses_engine=False, shard_size=None)


def mcts_job(out: Path, *, input_path: Path, engine: EngineSpec, strict: bool = False, salvage: bool = False,
             max_failure_rate: float = 0.1, on_progress: Progress | None = None, **search_options) -> dict:
    """MCTS instruction search (mcts_search_step(**search_options)) over the seeds at `input_path`, then SFT, DPO
    and step datasets from the trees, exported as DIR/export/{sft,dpo,steps}.parquet."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trees = run_steps(out, [mcts_search_step(**search_options)], write_input(out, input_path, strict=strict, salvage=salvage), engine=engine,
                      max_failure_rate=max_failure_rate, on_progress=on_progress)
    exports = {}
    for name in MCTS_DATASETS:
        built = run_steps(out, [mcts_dataset_step(name)], trees, engine=None, on_progress=on_progress)
        exports[name] = str(export_parquet(out, built, name))
    return summarize(out) | {"export": exports, "seconds": round(time.perf_counter() - started, 1)}
