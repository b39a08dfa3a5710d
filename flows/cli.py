"""The `aligndata` command: pipeline.cli.commands plus `run`, which runs the end-to-end Prefect flow."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli import output
from pipeline.cli.commands import app
from pipeline.cli.common import (ALLOW_UNSCRUBBED, ENGINE_HELP, Backend, console, fail, hoist_global_options, job_errors,
                                 print_summary)

QUICKSTART_SYNTHESIS = {"shard_size": 8}  # and the `auto` profile: `cpu` for SmolLM2, the official settings for a registry model


@app.command()
def run(
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    n: int = typer.Option(24, help="Instructions to sample."),
    seed: int = typer.Option(0),
    k: int = typer.Option(12, help="Rows to select after dedup and deita scoring."),
    engine: Backend = typer.Option("vllm", help=ENGINE_HELP),
    model: str = typer.Option("smollm2"),
    base_url: Optional[str] = typer.Option(None),
    repo: Optional[str] = typer.Option(None, help="Also push to this Hub dataset repository (token from HF_TOKEN)."),
    ray: Optional[str] = typer.Option(None, help="Run synthesize and curate on Ray: 'local' or a cluster address."),
    replicas: int = typer.Option(1, min=1, help="Engine replicas per engine step (on --ray, else a local Ray)."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Rows per shard in every step (default: 8 "
                                                                       "for synthesis, 64 for scoring)."),
    wait: bool = typer.Option(False, "--wait", help="If another command is writing --out, wait for it to finish "
                                                    "(default: refuse, naming it)."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0.0, help="Stop, resumable, before an engine "
                                                                             "window would pass this many USD."),
    prices: Optional[Path] = typer.Option(None, "--prices", help="A YAML file of prices over the bundled table."),
    allow_unscrubbed: bool = ALLOW_UNSCRUBBED,
) -> None:
    """The main job, as the end-to-end Prefect flow: Magpie synthesis → dedup, deita scores, diverse selection →
    Parquet, dataset card, trainer exports (TRL, HF, LLaMA-Factory, axolotl) → report, all in --out.

    Runs on Prefect's ephemeral API unless PREFECT_API_URL names a server. Magpie samples with the `auto`
    profile: the official settings for a model of the registry; for others (SmolLM2) the CPU profile, whose
    responses are sampled at T=0.6, top_p=0.9 (the official Llama-3.1 setting) rather than greedy: greedy
    SmolLM2-135M loops until the token limit on most prompts.
    """
    from flows.end_to_end import end_to_end_flow

    from pipeline.core.rundir import writer_lock

    started = time.perf_counter()
    with output.third_party_output_to_log(out, console), output.manifest_status(out, console, "end-to-end flow"):
        try:
            # the flow takes the same lock again (re-entrant in a process): this one may wait, a deployment's refuses
            with writer_lock(out, wait=wait, on_wait=lambda message: console.print(message, soft_wrap=True)):
                summary = end_to_end_flow(out=str(out), n=n, seed=seed, engine={"backend": engine, "model": model,
                                                                                "base_url": base_url},
                                          synthesize=QUICKSTART_SYNTHESIS | ({"shard_size": shard_size} if shard_size else {}),
                                          curate={"k": k, **({"shard_size": shard_size} if shard_size else {})},
                                          title="Magpie conversations, deita-selected", repo_id=repo, ray_address=ray,
                                          replicas=replicas, max_cost=max_cost, prices=str(prices) if prices else None,
                                          allow_unscrubbed=allow_unscrubbed)
        except job_errors() as exc:
            raise fail(exc) from exc
    if not output.settings["verbose"]:  # Prefect logs the ephemeral server's shutdown at exit, after run.log closed
        logging.getLogger("prefect").setLevel(logging.WARNING)
    print_summary(summary | {"seconds": round(time.perf_counter() - started, 1)}, out)
    console.print(f"trainer exports: {', '.join(str(Path(out) / 'export' / fmt) for fmt in summary['trainer'])}; "
                  f"report: {summary['report']}; third-party logs: {Path(out) / output.RUN_LOG}", soft_wrap=True)


def main() -> None:
    import sys

    app(args=hoist_global_options(sys.argv[1:]))


if __name__ == "__main__":
    main()
