"""Whether a run's rows were scrubbed of personal data, and what the `pii` pass found: for the card's PII section and
for `publish`, which refuses rows imported from users' data that no PII pass went over.

A run is `scrubbed` when every exported row went through a PII pass (its meta has "pii": in this run or in the run
that made its input), `not scrubbed` when it imported data (an `input` stage) and some exported row did not, and
`synthetic` when its rows were made by models from nothing imported (Magpie): there were no users' data to scrub.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.select.pii import TYPES

PII_FUNCTION = "pipeline.select.pii.scrub"


def summary(run_dir: Path, export: Path | None = None) -> dict:
    """{"status", "found": {type: values}, "dropped": {type: rows}, "actions": {type: "redact"|"drop"}} of a run."""
    from pipeline.core.rundir import summarize

    run_dir = Path(run_dir)
    export = export or run_dir / "export" / "data.parquet"
    funnel = summarize(run_dir)["stages"]
    found: dict[str, int] = {}
    dropped: dict[str, int] = {}
    actions: dict[str, str] = {}
    passes = 0
    for name, stage in funnel.items():
        path = run_dir / name / "stage.json"
        info = json.loads(path.read_text()) if path.exists() else {}
        if info.get("function") != PII_FUNCTION:
            continue
        passes += 1
        for kind, count in stage.get("counts", {}).items():
            found[kind] = found.get(kind, 0) + count
        for reason, count in stage["drops"].items():
            if reason.startswith("pii:"):
                dropped[reason[4:]] = dropped.get(reason[4:], 0) + count
        params = info.get("params", {})
        actions |= {kind: "drop" if kind in params.get("drop", []) else "kept" if kind in params.get("keep", []) else "redact"
                    for kind in TYPES}
    rows = pl.read_parquet(export, columns=["meta"]) if export.exists() else pl.DataFrame({"meta": []}, schema={"meta": pl.String})
    every_row = bool(rows["meta"].str.json_path_match("$.pii").is_not_null().all()) if rows.height else passes > 0
    if every_row and (passes or rows.height):
        status = "scrubbed"
    elif (run_dir / "input" / "stage.json").exists():
        status = "not scrubbed"
    else:
        status = "synthetic"
    return {"status": status, "passes": passes, "found": found, "dropped": dropped, "actions": actions}


def refusal(run_dir: Path) -> str | None:
    """Why `publish` refuses the run (its rows came from imported data that no PII pass went over), or None."""
    if summary(run_dir)["status"] != "not scrubbed":
        return None
    return (f"{run_dir}: its rows come from imported data that no PII pass went over (the job ran with --no-pii, or "
            "does not scrub); re-run it without --no-pii (or run `aligndata curate` on its export), or pass "
            "--allow-unscrubbed to publish them as they are")
