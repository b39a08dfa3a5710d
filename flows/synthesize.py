"""The synthesize flow: Magpie from nothing, or CodecLM / MCTS instruction search from seed rows, to conversations."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.tasks import engine_json, input_task, plan_task, run_steps
from pipeline import recipes
from pipeline.core.rundir import writer_lock


@flow(name="synthesize")
def synthesize_flow(out: str, method: str = "magpie", n: int = 24, seed: int = 0, seeds: str | None = None,
                    engine: dict | None = None, options: dict | None = None, max_failure_rate: float = 0.1,
                    gpus: float = 0.0, replicas: int = 1, ray_address: str | None = None) -> str:
    """Synthesize into the run directory `out`; returns the stage directory holding the conversations.

    `method`: magpie (plans `n` rows from `seed`), codeclm or mcts (read the seed rows at `seeds`). `options` are
    the keyword arguments of recipes.magpie_steps / codeclm_steps / mcts_search_step. `engine` is EngineSpec.make's
    keyword arguments (default: SmolLM2 on vLLM).
    """
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused
        options = dict(options or {})
        if method == "magpie":  # the model decides the `auto` profile: the official settings for a registry family
            options.setdefault("model", (engine or {}).get("model", "smollm2"))
        steps = recipes.synthesis_steps(method, **options)
        if method == "magpie":
            source = plan_task.submit(out, n, seed).result()
        elif seeds is None:
            raise ValueError(f"method {method!r} starts from seed rows: pass seeds=PATH (Parquet, JSONL or a datasets dir)")
        else:
            source = input_task.submit(out, seeds).result()
        return run_steps(out, steps, source, engine=engine_json(engine), max_failure_rate=max_failure_rate, gpus=gpus,
                         replicas=replicas, ray_address=ray_address)
