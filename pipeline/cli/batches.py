"""`aligndata batches DIR` lists a run's provider batches and their state; `aligndata batches cancel DIR` cancels
the ones still open (the next run of the same command sends what they did not finish)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.cli.common import console, fail
from pipeline.engines import EngineSpec, load_engine
from pipeline.engines.batches import records

OPEN = {"anthropic": ("in_progress",), "openai": ("validating", "in_progress", "finalizing", "submitted")}


def _batches(run_dir: Path) -> list[tuple[str, dict, dict, EngineSpec | None]]:
    """(stage, record, round, the stage's batch engine) for every batch of the run directory."""
    found = []
    for folder in sorted(Path(run_dir).glob("*/batches")):
        stage = json.loads((folder.parent / "stage.json").read_text()) if (folder.parent / "stage.json").exists() else {}
        described = [stage.get("engine"), *(stage.get("engines") or {}).values()]
        specs = [EngineSpec.make(d["backend"], d["model"], base_url=d.get("base_url"), template=d.get("template"),
                                 options=d.get("options") or {}) for d in described if d]
        for record in records(folder):
            spec = next((s for s in specs if s.opts.get("batch") and s.backend == {"openai": "openai-chat"}.get(
                record["provider"], record["provider"])), None)
            found += [(folder.parent.name, record, current, spec) for current in record["rounds"]]
    return found


def _status(spec: EngineSpec | None, provider: str, batch_id: str) -> str | None:
    """The provider's status of a batch now, or None when its engine cannot be reached (a key not set, say)."""
    if spec is None:
        return None
    try:
        client = load_engine(spec).client
        return client.batches.retrieve(batch_id).status if provider == "openai" else \
            client.messages.batches.retrieve(batch_id).processing_status
    except Exception:  # noqa: BLE001 - not reachable now: the recorded state is shown instead
        return None


def batches(what: str = typer.Argument(..., metavar="[cancel] DIR", help="A run directory; `cancel DIR` cancels its "
                                                                    "open batches."),
            run_dir: Path = typer.Argument(None, hidden=True)) -> None:
    """A run's provider batches (engines with --option batch=true): `aligndata batches DIR` lists them (stage,
    provider, batch id, requests, state); `aligndata batches cancel DIR` cancels the open ones, and a later run of the
    same command sends what they did not finish."""
    cancelling = what == "cancel"
    run_dir = run_dir if cancelling else Path(what)
    if run_dir is None or not Path(run_dir).is_dir():
        raise fail(FileNotFoundError(f"{run_dir}: not a run directory"))
    found = _batches(run_dir)
    if not found:
        console.print(f"{run_dir} has no provider batches (engines send batches with --option batch=true)")
        return
    cancelled = 0
    for stage, record, current, spec in found:
        provider, batch_id = record["provider"], current["batch_id"]
        state = _status(spec, provider, batch_id)
        if cancelling:
            if (state or current["status"]) not in OPEN[provider] or spec is None:
                continue
            client = load_engine(spec).client
            (client.batches if provider == "openai" else client.messages.batches).cancel(batch_id)
            console.print(f"{stage}: cancelled {provider} batch {batch_id}", soft_wrap=True, highlight=False)
            cancelled += 1
            continue
        console.print(f"{stage:>14}  {provider:<9} {batch_id}  {len(current['custom_ids'])} requests  "
                      f"{state or current['status'] + ' (as last recorded)'}  submitted {current.get('submitted', '?')}",
                      soft_wrap=True, highlight=False)
    if cancelling:
        console.print(f"{cancelled} batch{'es' if cancelled != 1 else ''} cancelled in {run_dir}")
