"""Prefect flows and tasks over pipeline.recipes steps (pipeline/ never imports Prefect)."""
import os

# Offline hosts: Prefect's server would log a failed telemetry call on every start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
