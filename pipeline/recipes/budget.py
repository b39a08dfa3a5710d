"""Tokens, cost and a budget for a run: what each engine window used, priced (pipeline.engines.usage), written into
its shards' manifest lines, and a `--max-cost` that stops a run, resumable, before a window would pass it.

    with spending(prices="prices.yaml", max_cost=20.0):   # the CLI's --prices and --max-cost
        run_steps(...)

The estimate of a window is the stage's cost per input row so far times the window's rows (the first window of a
stage is run to learn it, unless an earlier run of the stage left a rate in the manifest); what was spent is the sum
of the run directory's manifest, so a resumed run counts what it spent before.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pipeline.core.rundir import read_manifest
from pipeline.engines.usage import LOCAL_BACKENDS, Usage, cost, load_prices, price_of


class BudgetExceeded(RuntimeError):
    """The next window would pass --max-cost (or a hosted model has no price to keep it with); finished shards are kept."""


@dataclass
class Spending:
    prices: dict = field(default_factory=lambda: load_prices(None))
    max_cost: float | None = None


SPENDING: contextvars.ContextVar[Spending] = contextvars.ContextVar("aligndata_spending", default=Spending())


@contextlib.contextmanager
def spending(prices: str | Path | None = None, max_cost: float | None = None) -> Iterator[Spending]:
    """Stages run inside this block price their tokens with `prices` (a YAML file over the bundled table) and stop
    before passing `max_cost` USD over the run directory."""
    token = SPENDING.set(Spending(load_prices(prices), max_cost))
    try:
        yield SPENDING.get()
    finally:
        SPENDING.reset(token)


def priced(used: dict[str, dict], share: float = 1.0) -> tuple[dict, float | None]:
    """A window's engine usage ({role: {backend, model, **Usage fields}}) times `share` (a shard's part), and its cost
    in USD (None when a hosted model has no price)."""
    prices, tokens, total = SPENDING.get().prices, {}, 0.0
    for role, entry in used.items():
        usage = Usage(**{k: v for k, v in entry.items() if k not in ("backend", "model")}).scaled(share)
        value = cost(entry["backend"], entry["model"], usage, prices)
        tokens[role] = {"backend": entry["backend"], "model": entry["model"], **usage.as_dict(), "cost_usd": value}
        total = None if value is None or total is None else total + value
    return tokens, (round(total, 6) if total is not None else None)


def check_prices(specs) -> None:
    """With a budget, every hosted model must have a price: a cost of None cannot be kept under it."""
    budget = SPENDING.get()
    if budget.max_cost is None:
        return
    unpriced = sorted({s.model for s in specs if s.backend not in LOCAL_BACKENDS and price_of(s.model, budget.prices) is None})
    if unpriced:
        raise BudgetExceeded(f"no price for {unpriced}, so --max-cost cannot be kept: add them to a --prices file "
                             "({model: {input: USD per 1M tokens, output: ...}}), or drop --max-cost")


def spent(run_dir: Path) -> float:
    """USD the run directory's finished shards cost (their latest manifest line each)."""
    latest = {}
    for entry in read_manifest(run_dir):
        if entry.get("status") == "done" and "shard" in entry:
            latest[(entry["stage"], entry["shard"])] = entry.get("cost_usd") or 0.0
    return sum(latest.values())


def check_window(run_dir: Path, stage: str, rows: int) -> None:
    """Stop before a window of `rows` input rows of `stage` would take the run past the budget."""
    budget = SPENDING.get()
    if budget.max_cost is None:
        return
    done = [e for e in read_manifest(run_dir) if e.get("stage") == stage and e.get("status") == "done"]
    rows_done, cost_done = sum(e["rows_in"] for e in done), sum(e.get("cost_usd") or 0.0 for e in done)
    so_far = spent(run_dir)
    estimate = cost_done / rows_done * rows if rows_done else 0.0
    if so_far + estimate > budget.max_cost:
        raise BudgetExceeded(f"stage {stage!r}: ${so_far:.4f} spent, and its next {rows} rows would cost about "
                             f"${estimate:.4f}, past --max-cost ${budget.max_cost:g}; finished shards are kept: run the "
                             "same command with a higher --max-cost to go on")
