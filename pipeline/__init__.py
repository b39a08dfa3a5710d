"""aligndata's library: records, run directories, chat templates, engines and one module per method.

Never imports Prefect (flows/ does)."""
