"""`aligndata plan`: what a job will cost before it runs, from running it on a sample.

The job runs on its first rows (a shard or two per stage: pipeline.core.inputs.SAMPLE_ROWS cuts its source) in a
scratch directory; each stage's measured rates (its keep ratio, and its tokens, cost and seconds per input row) then
scale to the full source, stage after stage: a stage gets the rows the previous one is predicted to keep, and a
selection to k rows keeps min(k, its rows). What a sample cannot show is not predicted: duplicates across the whole
input (dedup keeps more of a sample than of the whole), and an engine's speed-up with bigger batches.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.rundir import summarize


def selections(run_dir: Path) -> dict[str, int]:
    """The stages of a run directory that select k rows, with their k (a `k` parameter in stage.json)."""
    found = {}
    for stage_json in Path(run_dir).glob("*/stage.json"):
        k = (json.loads(stage_json.read_text()).get("params") or {}).get("k")
        if isinstance(k, int):
            found[stage_json.parent.name] = k
    return found


def predict(summary: dict, full_rows: int, ks: dict[str, int] | None = None) -> list[dict]:
    """Per stage of a sample run's summary (rundir.summarize, in run order): the rows, tokens, seconds and cost of
    the full run whose source has `full_rows` rows.

    >>> sample = {"stages": {"input": {"rows_in": 10, "rows_out": 10, "seconds": 1.0},
    ...                      "scored": {"rows_in": 10, "rows_out": 8, "seconds": 4.0, "cost_usd": 0.02,
    ...                                 "tokens": {"m": {"prompt_tokens": 500, "completion_tokens": 50}}},
    ...                      "selected": {"rows_in": 8, "rows_out": 5, "seconds": 0.1}}}
    >>> [(p["stage"], p["rows_in"], p["rows_out"], p["cost_usd"]) for p in predict(sample, 1000, {"selected": 5})]
    [('input', 1000, 1000, None), ('scored', 1000, 800, 2.0), ('selected', 800, 5, None)]
    >>> predict(sample, 1000, {"selected": 5})[1]["prompt_tokens"]
    50000
    """
    ks, rows, predicted = ks or {}, float(full_rows), []
    for stage, s in summary["stages"].items():
        scale = rows / s["rows_in"] if s["rows_in"] else 0.0
        kept = min(ks[stage], rows) if stage in ks else s["rows_out"] * scale
        tokens = s.get("tokens") or {}
        prompt = sum(t.get("prompt_tokens", 0) + t.get("batch_prompt_tokens", 0) for t in tokens.values())
        completion = sum(t.get("completion_tokens", 0) + t.get("batch_completion_tokens", 0) for t in tokens.values())
        cost = s.get("cost_usd")
        predicted.append({"stage": stage, "rows_in": round(rows), "rows_out": round(kept),
                          "prompt_tokens": round(prompt * scale), "completion_tokens": round(completion * scale),
                          "seconds": round(s["seconds"] * scale, 1),
                          "cost_usd": None if cost is None else round(cost * scale, 4)})
        rows = kept
    return predicted


def plan_of(run_dir: Path, full_rows: int) -> list[dict]:
    """The prediction from a sample run directory (its summary and its selections)."""
    return predict(summarize(run_dir), full_rows, selections(run_dir))


def compare(predicted: list[dict], run_dir: Path) -> list[dict]:
    """Predicted against actual per stage of a finished run: rows out, tokens and seconds, with actual / predicted."""
    actual = summarize(run_dir)["stages"]
    rows = []
    for p in predicted:
        a = actual.get(p["stage"])
        if a is None:
            continue
        tokens = sum(t.get(k, 0) for t in (a.get("tokens") or {}).values()
                     for k in ("prompt_tokens", "completion_tokens", "batch_prompt_tokens", "batch_completion_tokens"))
        pairs = {"rows_out": (p["rows_out"], a["rows_out"]), "tokens": (p["prompt_tokens"] + p["completion_tokens"], tokens),
                 "seconds": (p["seconds"], a["seconds"])}
        rows.append({"stage": p["stage"], **{f"{k}_predicted": v[0] for k, v in pairs.items()},
                     **{f"{k}_actual": v[1] for k, v in pairs.items()},
                     **{f"{k}_ratio": round(v[1] / v[0], 3) if v[0] else None for k, v in pairs.items()}})
    return rows
