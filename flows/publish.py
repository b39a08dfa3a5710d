"""The publish flow: Parquet export with its dataset card, trainer-ready exports, and an optional Hub push."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.ship import export
from pipeline import recipes
from pipeline.ship import publish
from pipeline.core.rundir import read_records
from pipeline.core.rundir import writer_lock

TRAINER_FORMATS = ("trl", "hf", "llamafactory", "axolotl")


@task(cache_policy=NO_CACHE)
def export_task(out: str, source: str, title: str) -> str:
    return str(recipes.export_parquet(Path(out), Path(source), card=title))


@task(cache_policy=NO_CACHE)
def trainer_export_task(out: str, data: str, fmt: str) -> dict:
    return {k: str(v) for k, v in export.export(read_records(Path(data)), Path(out) / "export" / fmt, fmt).items()}


@task(cache_policy=NO_CACHE)
def push_task(out: str, repo_id: str, token_env: str, private: bool, allow_unscrubbed: bool = False) -> dict:
    return publish.push(Path(out), repo_id, token_env=token_env, private=private, allow_unscrubbed=allow_unscrubbed)


@flow(name="publish")
def publish_flow(out: str, source: str | None = None, title: str = "Alignment data", formats: list[str] | None = None,
                 repo_id: str | None = None, token_env: str = "HF_TOKEN", private: bool = False,
                 allow_unscrubbed: bool = False) -> dict:
    """Export the stage directory `source` of run `out` (DIR/export: data.parquet, README.md card, one directory per
    trainer format) and, with `repo_id`, push data + card + manifest to the Hub at HF_ENDPOINT. Without `source`,
    the run's existing export is pushed as it is; rows imported from users' data that no PII pass went over are
    refused unless `allow_unscrubbed` (pipeline.ship.scrubbing)."""
    with writer_lock(Path(out)):  # one writer per run directory: another flow run on it is refused
        if source:
            data = export_task(out, source, title)
            trainer = {fmt: trainer_export_task(out, data, fmt) for fmt in (formats if formats is not None else TRAINER_FORMATS)}
        else:
            data, trainer = str(Path(out) / "export" / "data.parquet"), {}
        pushed = push_task(out, repo_id, token_env, private, allow_unscrubbed) if repo_id else None
        return {"data": data, "trainer": trainer, "push": pushed}
