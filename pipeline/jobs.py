"""Jobs: lists of steps over one run directory. The CLI runs them in-process (`run_steps`); the Prefect
flows in flows/ run each step as a task. A Step names its stage function by import path, so it is plain
data that Prefect can hash and pass between processes.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import filters
from pipeline import magpie
from pipeline.engines import EngineSpec, release_engines
from pipeline.io import append_manifest, read_manifest, read_shards, write_shard
from pipeline.runner import run_stage

FILTER_VERSION = "1"


@dataclass(frozen=True)
class Step:
    """One stage application: `name` is its directory in the run; `stage` is "module:function"."""

    name: str
    stage: str
    version: str
    params: dict = field(default_factory=dict)
    uses_engine: bool = True
    shard_size: int | None = 32  # None: the whole input as one shard (filters that compare rows)
    computes: tuple[str, ...] = ()  # columns the stage fills; their nulls are counted in the manifest
    engine: str | None = None  # EngineSpec JSON of a model for this step only (else the job's engine)

    def function(self) -> Callable:
        module, _, name = self.stage.partition(":")
        return getattr(importlib.import_module(module), name)


def run_step(out: Path, step: Step, source: Path, *, engine: EngineSpec | None, max_failure_rate: float = 0.1,
             on_shard: Callable[[int, int], None] | None = None) -> Path:
    """Run one step on the stage directory `source`; returns the step's stage directory."""
    if step.engine:
        engine = EngineSpec.from_json(step.engine)
    if engine is not None and engine.backend == "vllm" and step.uses_engine:  # free the GPU for this step's model
        release_engines({engine.to_json(), *(v for v in step.params.values() if isinstance(v, str) and v.startswith('{"backend"'))})
    return run_stage(out, step.name, step.function(), source=source, version=step.version, params=step.params,
                     engine=engine if step.uses_engine else None, shard_size=step.shard_size,
                     max_failure_rate=max_failure_rate, computes=tuple(step.computes), on_shard=on_shard)


def run_steps(out: Path, steps: list[Step], source: Path, *, engine: EngineSpec | None, max_failure_rate: float = 0.1,
              on_progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Run `steps` in order, each on the previous one's output; returns the last stage directory."""
    for step in steps:
        on_shard = (lambda done, total, name=step.name: on_progress(name, done, total)) if on_progress else None
        source = run_step(out, step, source, engine=engine, max_failure_rate=max_failure_rate, on_shard=on_shard)
    return source


def write_plan(out: Path, *, n: int, seed: int) -> Path:
    """DIR/plan/shard-00000.parquet: the `n` empty Magpie records to fill (rewritten identically on resume)."""
    plan_dir = Path(out) / "plan"
    if not (plan_dir / "shard-00000.parquet").exists():
        write_shard(magpie.plan(n, seed=seed), plan_dir / "shard-00000.parquet")
    return plan_dir


def magpie_steps(*, turns: int = 1, task: str | None = None, system: str | None = None,
                 instruction_temperature: float | None = None, instruction_max_tokens: int = 256,
                 response_temperature: float = 0.0, response_top_p: float = 1.0, response_max_tokens: int = 512,
                 instruction_filter_spec: list | None = None, filter_spec: list | None = None,
                 shard_size: int = 32) -> list[Step]:
    """Instructions → instruction filters → responses (→ follow-up + response per extra turn) → filters.

    Instructions are filtered before any response is generated so no engine time goes to rows that would
    be dropped; the final filters check every turn again.
    """
    responses = {"temperature": response_temperature, "top_p": response_top_p, "max_tokens": response_max_tokens}
    steps = [
        Step("instructions", "pipeline.magpie:synthesize", magpie.VERSION, {
            "task": task, "system": system, "temperature": instruction_temperature, "max_tokens": instruction_max_tokens},
            shard_size=shard_size),
        Step("instructions-filtered", "filters:mark", FILTER_VERSION,
             {"spec": filters.MAGPIE_INSTRUCTION if instruction_filter_spec is None else instruction_filter_spec},
             uses_engine=False, shard_size=None),
        Step("responses", "pipeline.magpie:respond", magpie.VERSION, responses, shard_size=shard_size),
    ]
    for turn in range(2, turns + 1):
        steps += [Step(f"followups-{turn}", "pipeline.magpie:follow_up", magpie.VERSION,
                       {"max_tokens": instruction_max_tokens}, shard_size=shard_size),
                  Step(f"responses-{turn}", "pipeline.magpie:respond", magpie.VERSION, responses, shard_size=shard_size)]
    spec = filters.MAGPIE_BASIC if filter_spec is None else filter_spec
    return steps + [Step("filtered", "filters:mark", FILTER_VERSION, {"spec": spec}, uses_engine=False, shard_size=None)]


def export_parquet(run_dir: Path, stage_dir: Path, name: str = "data", card: str | None = None) -> Path:
    """Write the kept rows of `stage_dir` to DIR/export/<name>.parquet (atomically) and log it; with `card`
    (a title), also the dataset card DIR/export/README.md."""
    from pipeline import card as cards

    df = read_shards(stage_dir)
    path = write_shard(df, Path(run_dir) / "export" / f"{name}.parquet")
    append_manifest(run_dir, {"stage": "export", "rows_in": df.height, "rows_out": df.height, "path": str(path)})
    if card:
        cards.write(run_dir, Path(run_dir) / "export" / "README.md", pretty_name=card,
                    description=f"Made by aligndata from the run directory `{Path(run_dir).name}`.")
    return path


def _job(out: Path, steps: list[Step], source: Callable[[Path], Path], *, engine: EngineSpec | None, card: str,
         max_failure_rate: float, on_progress: Callable[[str, int, int], None] | None) -> dict:
    """Write the source stage, run `steps` on it, export Parquet and the card; returns summarize()."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    last = run_steps(out, steps, source(out), engine=engine, max_failure_rate=max_failure_rate, on_progress=on_progress)
    path = export_parquet(out, last, card=card)
    return summarize(out) | {"export": str(path), "seconds": round(time.perf_counter() - started, 1)}


def magpie_job(out: Path, *, n: int, seed: int, engine: EngineSpec, max_failure_rate: float = 0.1,
               on_progress: Callable[[str, int, int], None] | None = None, **step_options) -> dict:
    """Magpie end to end into `out`: plan, the magpie_steps(**step_options), Parquet export; returns summarize()."""
    return _job(out, magpie_steps(**step_options), lambda d: write_plan(d, n=n, seed=seed), engine=engine,
                card="Magpie conversations", max_failure_rate=max_failure_rate, on_progress=on_progress)


def summarize(run_dir: Path) -> dict:
    """Rows in/out, drops by reason and seconds per stage, from the manifest's finished shards."""
    latest: dict[tuple, dict] = {}
    for entry in read_manifest(run_dir):
        if entry.get("status") == "done":
            latest[(entry["stage"], entry["shard"])] = entry
    stages: dict[str, dict] = {}
    for (stage, _), entry in latest.items():
        s = stages.setdefault(stage, {"rows_in": 0, "rows_out": 0, "drops": {}, "nulls": {}, "seconds": 0.0})
        s["rows_in"] += entry["rows_in"]
        s["rows_out"] += entry["rows_out"]
        s["seconds"] = round(s["seconds"] + entry["seconds"], 2)
        for reason, count in entry["drops"].items():
            s["drops"][reason] = s["drops"].get(reason, 0) + count
        for column, count in entry.get("nulls", {}).items():
            s["nulls"][column] = s["nulls"].get(column, 0) + count
    return {"stages": stages}


DEDUP_METHODS = ("exact", "minhash", "semantic")
SELECTORS = ("diverse", "isa")


def write_input(out: Path, path: Path, fmt: str | None = None) -> Path:
    """DIR/input/shard-00000.parquet: the input as records (written once; a re-run reuses it).

    Records written by aligndata (a run's export or a stage directory) keep all their columns; other
    data is imported from the messages, ShareGPT or Alpaca form.
    """
    from pipeline.imports import load, read_table

    input_dir = Path(out) / "input"
    if not (input_dir / "shard-00000.parquet").exists():
        table = read_table(Path(path))
        records = table.drop("drop_reason", strict=False) if {"id", "source", "meta"} <= set(table.columns) else load(path, fmt)
        write_shard(records, input_dir / "shard-00000.parquet")
    return input_dir


def input_job(out: Path, *, input_path: Path, steps: list[Step], engine: EngineSpec | None, fmt: str | None = None,
              max_failure_rate: float = 0.1, on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run `steps` over the input at `input_path` into `out` and export; returns summarize()."""
    return _job(out, steps, lambda d: write_input(d, input_path, fmt), engine=engine, card="Curated alignment data",
                max_failure_rate=max_failure_rate, on_progress=on_progress)


def tag_steps(*, tags: tuple[str, ...] = ("quality", "difficulty", "category"), language: bool = True,
              reward: bool = True, neighbors: bool = True, reward_model_path: str | None = None,
              base: EngineSpec | None = None, shard_size: int = 64) -> list[Step]:
    """Magpie's tags, language, reward (and reward difference with a base model), min-neighbour distance."""
    from pipeline import embed, reward as reward_module, selection, tags as tags_module

    tag_columns = {"quality": ("input_quality",), "difficulty": ("difficulty",), "category": ("task_category",)}
    steps = [Step("tagged", "pipeline.tags:tag", tags_module.VERSION, {"tags": list(tags)}, shard_size=shard_size,
                  computes=tuple(c for t in tags for c in tag_columns.get(t, ())))]
    if language:
        steps.append(Step("language", "pipeline.tags:language", tags_module.VERSION, {}, uses_engine=False, shard_size=4096))
    if reward and base is None:
        steps.append(Step("rewarded", "pipeline.reward:score_rewards", reward_module.VERSION,
                          {"reward_model_path": reward_model_path}, shard_size=shard_size, computes=("instruct_reward",)))
    elif reward:
        steps.append(Step("rewarded", "pipeline.reward:reward_difference", reward_module.VERSION,
                          {"reward_model_path": reward_model_path, "base": base.to_json()}, shard_size=shard_size,
                          computes=("instruct_reward", "base_reward")))
    if neighbors:
        steps += [Step("embedded", "pipeline.embed:embed", embed.VERSION, {}, uses_engine=False, shard_size=4096),
                  Step("neighbors", "pipeline.selection:neighbors", selection.VERSION, {}, uses_engine=False, shard_size=None)]
    return steps


def curate_steps(*, k: int = 1000, tau: float = 0.9, dedup: tuple[str, ...] = DEDUP_METHODS, selector: str = "diverse",
                 isa_fraction: float = 0.1, score_mode: str = "scorer", top_logprobs: int = 20,
                 embed_field: str = "instruction", reference: str | None = None, complexity_engine: dict | None = None,
                 shard_size: int = 64) -> list[Step]:
    """Exact/MinHash dedup → embeddings → semantic dedup (→ decontamination against `reference`) → deita
    scores → selection (Repr Filter or ISA). `complexity_engine` (EngineSpec.make's keyword arguments) scores
    complexity with a second model, e.g. deita's complexity scorer next to its quality scorer as the engine."""
    from pipeline import deita, embed, selection, subsample

    unknown = set(dedup) - set(DEDUP_METHODS)
    if unknown or selector not in SELECTORS:
        raise ValueError(f"dedup methods must be in {list(DEDUP_METHODS)} and selector in {list(SELECTORS)}; "
                         f"got {sorted(unknown)} and {selector!r}")

    def dedup_step(method):
        return Step(f"dedup-{method}", "pipeline.selection:dedup", selection.VERSION, {"method": method},
                    uses_engine=False, shard_size=None)

    steps = [dedup_step(m) for m in ("exact", "minhash") if m in dedup]
    steps.append(Step("embedded", "pipeline.embed:embed", embed.VERSION, {"field": embed_field}, uses_engine=False,
                      shard_size=4096))
    steps += [dedup_step("semantic")] if "semantic" in dedup else []
    if reference:
        steps.append(Step("decontaminated", "pipeline.selection:decontaminate", selection.VERSION,
                          {"reference": str(Path(reference).resolve()), "field": embed_field}, uses_engine=False, shard_size=None))
    scoring = {"mode": score_mode, "top_logprobs": top_logprobs}
    if complexity_engine:  # two models, two steps: the engine swap happens once, between them
        steps.append(Step("scored-complexity", "pipeline.deita:score", deita.VERSION, scoring | {"part": "complexity"},
                          shard_size=shard_size, engine=EngineSpec.make(**complexity_engine).to_json()))
        scoring |= {"part": "quality"}
    steps.append(Step("scored", "pipeline.deita:score", deita.VERSION, scoring, shard_size=shard_size, computes=("deita_score",)))
    if selector == "diverse":
        steps.append(Step("selected", "pipeline.selection:diverse_top_k", selection.VERSION, {"k": k, "tau": tau},
                          uses_engine=False, shard_size=None))
    else:
        steps.append(Step("selected", "pipeline.subsample:isa", subsample.VERSION, {"fraction": isa_fraction},
                          uses_engine=False, shard_size=None))
    return steps


def curate_job(out: Path, *, input_path: Path, engine: EngineSpec, fmt: str | None = None, max_failure_rate: float = 0.1,
               on_progress: Callable[[str, int, int], None] | None = None, **step_options) -> dict:
    """Curate the user's data into `out`: import, curate_steps(**step_options), Parquet export (selection order)."""
    return input_job(out, input_path=input_path, steps=curate_steps(**step_options), engine=engine, fmt=fmt,
                     max_failure_rate=max_failure_rate, on_progress=on_progress)


def mcts_search_step(out: Path, *, iterations: int = 20, exploration: float = 1.0, responses: int = 3,
                     reward_model_path: str | None = None, optimizer: EngineSpec | None = None,
                     responder: EngineSpec | None = None, responder_format: str = "chat", response_max_tokens: int = 512,
                     shard_size: int = 16) -> Step:
    """MCTS instruction search over seed rows; trees are saved under DIR/trees-state/ every iteration."""
    from pipeline import mcts

    return Step("trees", "pipeline.mcts:search_stage", mcts.VERSION, {
        "iterations": iterations, "exploration": exploration, "state_dir": str((Path(out) / "trees-state").resolve()),
        "responses": responses, "reward_model_path": reward_model_path, "responder_format": responder_format,
        "response_max_tokens": response_max_tokens,
        "optimizer": optimizer.to_json() if optimizer else None, "responder": responder.to_json() if responder else None},
        shard_size=shard_size)


MCTS_DATASETS = {"sft": "sft_rows", "dpo": "dpo_rows", "steps": "step_rows"}


def mcts_dataset_step(name: str) -> Step:
    """The step that builds one dataset (sft, dpo or steps) from the search's trees."""
    from pipeline import mcts

    return Step(f"mcts-{name}", f"pipeline.mcts:{MCTS_DATASETS[name]}", mcts.VERSION, uses_engine=False, shard_size=None)


def mcts_job(out: Path, *, input_path: Path, engine: EngineSpec, max_failure_rate: float = 0.1,
             on_progress: Callable[[str, int, int], None] | None = None, **search_options) -> dict:
    """MCTS instruction search (mcts_search_step(**search_options)) over the seeds at `input_path`, then SFT, DPO
    and step datasets from the trees, exported as DIR/export/{sft,dpo,steps}.parquet."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trees = run_steps(out, [mcts_search_step(out, **search_options)], write_input(out, input_path), engine=engine,
                      max_failure_rate=max_failure_rate, on_progress=on_progress)
    exports = {}
    for name in MCTS_DATASETS:
        built = run_steps(out, [mcts_dataset_step(name)], trees, engine=None, on_progress=on_progress)
        exports[name] = str(export_parquet(out, built, name))
    return summarize(out) | {"export": exports, "seconds": round(time.perf_counter() - started, 1)}


def codeclm_steps(*, n_metadata: int = 200, per_metadata: int = 1, theta: float = 3.0, max_iterations: int = 4,
                  target: EngineSpec | None = None, keep_unresolved: bool = False, judge_mode: str = "text",
                  response_max_tokens: int = 512, seed: int = 0, shard_size: int = 32) -> list[Step]:
    """Encode seeds → mix-and-match + decode → Self-Rubrics and Contrastive Filtering."""
    from pipeline import codeclm

    return [
        Step("encoded", "pipeline.codeclm:encode", codeclm.VERSION, {}, shard_size=shard_size),
        Step("decoded", "pipeline.codeclm:decode", codeclm.VERSION,
             {"n_metadata": n_metadata, "per_metadata": per_metadata, "seed": seed}, shard_size=None),
        Step("filtered", "pipeline.codeclm:contrastive", codeclm.VERSION,
             {"target": target.to_json() if target else None, "theta": theta, "max_iterations": max_iterations,
              "keep_unresolved": keep_unresolved, "judge_mode": judge_mode, "response_max_tokens": response_max_tokens,
              "seed": seed}, shard_size=shard_size),
    ]


SYNTHESIS_METHODS = ("magpie", "codeclm", "mcts")


def synthesis_steps(method: str, out: Path, **options) -> list[Step]:
    """The steps of one synthesis method: magpie_steps, codeclm_steps, or the MCTS search followed by its
    SFT rows (the DPO and step datasets are built by `aligndata mcts`)."""
    if method == "magpie":
        return magpie_steps(**options)
    if method == "codeclm":
        return codeclm_steps(**options)
    if method == "mcts":
        return [mcts_search_step(out, **options), mcts_dataset_step("sft")]
    raise ValueError(f"unknown synthesis method {method!r}; valid: {list(SYNTHESIS_METHODS)}")
