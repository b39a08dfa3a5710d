"""The Magpie job: a plan of empty records → instructions → instruction filters → responses (→ more turns) →
filters → Parquet export."""
from __future__ import annotations

from pathlib import Path

import filters
from pipeline.core.codehash import code_hash
from pipeline.core.inputs import SAMPLE_ROWS
from pipeline.core.rundir import check_identity, write_shard
from pipeline.engines import EngineSpec
from pipeline.engines.templates import family_of
from pipeline.recipes.steps import Progress, Step, run_job
from pipeline.synth import magpie


def write_plan(out: Path, *, n: int, seed: int) -> Path:
    """DIR/plan/shard-00000.parquet: the `n` empty Magpie records to fill. `n` and `seed` are the plan's identity
    (plan/stage.json): a run directory made with others is refused, never silently reused."""
    plan_dir = Path(out) / "plan"
    n = min(n, SAMPLE_ROWS.get() or n)  # `aligndata plan` samples the first rows
    check_identity(plan_dir, {"stage": "plan", "code": code_hash(magpie.plan), "n": n, "seed": seed})
    if not (plan_dir / "shard-00000.parquet").exists():
        write_shard(magpie.plan(n, seed=seed), plan_dir / "shard-00000.parquet")
    return plan_dir


# The CPU profile: a 135M model on a laptop CPU. The official scripts' lengths (2048-token instructions, 4096-token
# responses) let a small model that loops run for minutes per row, and greedy SmolLM2-135M loops on most prompts, so
# responses are sampled as the official Llama-3.1 script samples them. Listed in the README's deviation table.
CPU_PROFILE = {"instruction_max_tokens": 256, "response_max_tokens": 384, "response_temperature": 0.6, "response_top_p": 0.9}
PROFILES = ("auto", "paper", "cpu")


def profile_settings(profile: str, model: str | None) -> dict:
    """The sampling settings of a Magpie profile. `paper`: none pinned, so each stage takes the model family's
    official settings, else the official scripts' defaults; `cpu`: CPU_PROFILE; `auto`: `paper` for a model of
    the official registry (Llama-3.x, Qwen2.x, Phi-3, Gemma-2, Mistral), else `cpu`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown Magpie profile {profile!r}; valid: {list(PROFILES)}")
    if profile == "auto":
        profile = "paper" if model and family_of(model) else "cpu"
    return dict(CPU_PROFILE) if profile == "cpu" else {}


def magpie_steps(*, turns: int = 1, task: str | None = None, system: str | None = None, profile: str = "auto",
                 model: str | None = None, instruction_temperature: float | None = None,
                 instruction_max_tokens: int | None = None, response_temperature: float | None = None,
                 response_top_p: float | None = None, response_max_tokens: int | None = None, response_mode: str = "chat",
                 instruction_filter_spec: list | None = None, filter_spec: list | None = None,
                 responder: str | None = None, shard_size: int = 32) -> list[Step]:
    """Instructions → instruction filters → responses (→ follow-up + response per extra turn) → filters.

    Sampling: the settings given, else the `profile`'s (profile_settings; `model` decides `auto`), else the
    model family's official ones. Instructions are filtered before any response is generated so no engine time
    goes to rows that would be dropped; the final filters check every turn again. `responder` (EngineSpec JSON)
    answers instead of the job's engine: a hosted chat model, say (instructions need the pre-query's raw text).
    """
    given = {"instruction_max_tokens": instruction_max_tokens, "response_temperature": response_temperature,
             "response_top_p": response_top_p, "response_max_tokens": response_max_tokens}
    s = profile_settings(profile, model) | {k: v for k, v in given.items() if v is not None}
    responses = {"temperature": s.get("response_temperature"), "top_p": s.get("response_top_p"),
                 "max_tokens": s.get("response_max_tokens"), "mode": response_mode}
    steps = [
        Step("instructions", "pipeline.synth.magpie:synthesize", {
            "task": task, "system": system, "temperature": instruction_temperature,
            "max_tokens": s.get("instruction_max_tokens")}, shard_size=shard_size),
        Step("instructions-filtered", "filters:mark",
             {"spec": filters.MAGPIE_INSTRUCTION if instruction_filter_spec is None else instruction_filter_spec},
             uses_engine=False, shard_size=None),
        Step("responses", "pipeline.synth.magpie:respond", responses, shard_size=shard_size, engine=responder),
    ]
    for turn in range(2, turns + 1):
        steps += [Step(f"followups-{turn}", "pipeline.synth.magpie:follow_up", {"max_tokens": s.get("instruction_max_tokens")},
                       shard_size=shard_size),
                  Step(f"responses-{turn}", "pipeline.synth.magpie:respond", responses, shard_size=shard_size,
                       engine=responder)]
    spec = filters.MAGPIE_BASIC if filter_spec is None else filter_spec
    return steps + [Step("filtered", "filters:mark", {"spec": spec}, uses_engine=False, shard_size=None)]


def magpie_job(out: Path, *, n: int, seed: int, engine: EngineSpec, max_failure_rate: float = 0.1,
               on_progress: Progress | None = None, **step_options) -> dict:
    """Magpie end to end into `out`: plan, the magpie_steps(**step_options), Parquet export; returns summarize()."""
    return run_job(out, magpie_steps(**{"model": engine.model, **step_options}), lambda d: write_plan(d, n=n, seed=seed), engine=engine,
                card="Magpie conversations", max_failure_rate=max_failure_rate, on_progress=on_progress)
