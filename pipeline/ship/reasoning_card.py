"""What the card and the report say about distillation and tool-use runs: the verification settings, pass rates per
problem (a histogram: pipeline.ship.report draws it), the s1 selection, and APIGen's checks with the share of rows
each one passed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.rundir import read_shards

BINS = (0.0, 1e-9, 0.25, 0.5, 0.75, 1.0 - 1e-9, 1.0)  # 0 | (0, .25] | ... | (.75, 1) | 1
BIN_LABELS = ("0", "(0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.75, 1)", "1")


def _stages(run_dir: Path, function: str) -> list[dict]:
    found = []
    for path in sorted(Path(run_dir).glob("*/stage.json")):
        stage = json.loads(path.read_text())
        if stage.get("function") == function:
            found.append(stage)
    return found


def pass_rates(run_dir: Path) -> dict[str, pl.DataFrame]:
    """{sample stage: one row per problem (problem, pass_rate, answered)} from its kept and dropped rows."""
    from pipeline.synth.distill import pass_rates as per_problem

    out = {}
    for stage in _stages(run_dir, "pipeline.synth.distill.sample"):
        directory = Path(run_dir) / stage["stage"]
        rows = pl.concat([read_shards(directory), read_shards(directory, "dropped-*.parquet")], how="diagonal_relaxed")
        out[stage["stage"]] = per_problem(rows)
    return out


def histogram(rates: pl.Series) -> list[int]:
    """Problems per pass-rate bin (BIN_LABELS).

    >>> histogram(pl.Series([0.0, 0.25, 1.0, 0.5]))
    [1, 0, 1, 1, 0, 1]
    """
    values = rates.drop_nulls().to_numpy()
    return [int(n) for n in np.histogram(values, bins=BINS)[0]]


def notes(run_dir: Path) -> list[str]:
    """The card's notes on verification, pass rates, s1 selection and APIGen's checks (none for other runs)."""
    from pipeline.core.rundir import summarize
    from pipeline.core.sandbox import isolation
    from pipeline.synth.distill import describe

    run_dir, lines = Path(run_dir), []
    for stage in _stages(run_dir, "pipeline.synth.distill.sample"):
        lines.append(f"{stage['stage']}: verification: {describe(stage.get('params', {}))}")
    for name, rates in pass_rates(run_dir).items():
        rated = rates["pass_rate"].drop_nulls()
        counts = ", ".join(f"{label}: {n}" for label, n in zip(BIN_LABELS, histogram(rated)))
        lines.append(f"{name}: pass rate of {rated.len()} of {rates.height} problems (the others have no gold answer or "
                     f"no answered sample): mean {rated.mean() or 0:.2f}; problems per pass rate {counts}")
    for stage in _stages(run_dir, "pipeline.select.difficulty.select_problems"):
        p = stage.get("params", {})
        lines.append(f"{stage['stage']}: s1-style selection of {p.get('k')} problems, lowest pass rate first, skipping a "
                     f"problem within cosine {p.get('tau')} of one selected; pass rate above {p.get('max_pass_rate')} "
                     "dropped as too easy")
    funnel = summarize(run_dir)["stages"]
    checks = {"pipeline.synth.tools.check_format": "format (calls validate against their tool's JSON schema, jsonschema)",
              "pipeline.synth.tools.execute": "execution (the user's functions in a sandboxed subprocess, network cut "
                                              f"by {isolation()})",
              "pipeline.synth.tools.judge": "semantic (an engine judge)"}
    for function, what in checks.items():
        for stage in _stages(run_dir, function):
            s = funnel.get(stage["stage"], {})
            if s.get("rows_in"):
                judge = f" {stage['engine']['model']}" if stage.get("engine") else ""
                lines.append(f"{stage['stage']}: APIGen {what}{judge}: {s['rows_out']} of {s['rows_in']} rows passed "
                             f"({s['rows_out'] / s['rows_in']:.0%})")
    return lines
