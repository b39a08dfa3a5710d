"""Notices: what a run wants its user to see now (a lost replica, a capped replica count, a stage that cannot use
replicas), logged on the `aligndata` logger and kept in the run's manifest as an `event` line.

The command line shows the logger on the terminal (third-party output goes to DIR/run.log); Prefect shows it in a
flow run's logs when PREFECT_LOGGING_EXTRA_LOGGERS includes `aligndata`. Manifest readers that count rows look at
`status` lines only, so events never change a funnel.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.rundir import append_manifest

logger = logging.getLogger("aligndata")


def notice(run_dir: Path | None, stage: str, event: str, message: str, **fields) -> None:
    """Tell the user `message` about `stage` now, and record it in DIR/manifest.jsonl (when there is a run)."""
    logger.warning("%s: %s", stage, message)
    if run_dir is not None:
        append_manifest(run_dir, {"stage": stage, "event": event, "message": message, **fields})
