"""The `aligndata` command line (flows.cli adds the Prefect-run commands)."""
