"""Push a run's export to the Hugging Face Hub, or to any Hub-compatible server named by HF_ENDPOINT.

One commit holds the Parquet data (at the path the card's `configs` names), the dataset card and the run's
manifest. huggingface_hub skips files whose content the repository already has, so pushing the same export
again makes no new commit. The token comes from an environment variable and is never logged or written:
the push's record (`DIR/publish.json`) holds the repository, endpoint and commit only.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.rundir import write_atomic, write_json
from pipeline.core.secrets import redact

DATA_DIR = "data"  # the card's configs read data/*.parquet
MAX_SHARD_BYTES = 500 * 2**20  # the shard size `datasets.push_to_hub` uses


class PublishError(RuntimeError):
    """The push cannot be done as asked (no token, a refused token, nothing exported)."""


def files(run_dir: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> dict[str, Path]:
    """What a push uploads: repository path → local file. An export over `max_shard_bytes` is split into
    row slices (DIR/export/hub/, rewritten on each push) named data/train-0000i-of-0000n.parquet."""
    run_dir = Path(run_dir)
    data, card, manifest = run_dir / "export" / "data.parquet", run_dir / "export" / "README.md", run_dir / "manifest.jsonl"
    missing = [str(path) for path in (data, card, manifest) if not path.exists()]
    if missing:
        raise PublishError(f"nothing to publish in {run_dir}: missing {missing}; run `aligndata run --out {run_dir}` "
                           "(or a job that exports with a card) first")
    return {**data_shards(data, run_dir / "export" / "hub", max_shard_bytes), "README.md": card, "manifest.jsonl": manifest}


def data_shards(data: Path, shard_dir: Path, max_shard_bytes: int) -> dict[str, Path]:
    """The export as Hub data files: itself when small enough, else equal row slices written to `shard_dir`."""
    import pyarrow.parquet as pq

    count = max(1, -(-data.stat().st_size // max_shard_bytes))
    name = f"{DATA_DIR}/train-{{:05d}}-of-{count:05d}.parquet"
    if count == 1:
        return {name.format(0): data}
    table = pq.read_table(data)
    rows = -(-table.num_rows // count)
    shards = {}
    for i in range(count):
        path = shard_dir / Path(name.format(i)).name
        write_atomic(path, lambda tmp, i=i: pq.write_table(table.slice(i * rows, rows), tmp, compression="zstd"))
        shards[name.format(i)] = path
    for stale in set(shard_dir.glob("*.parquet")) - set(shards.values()):
        stale.unlink()
    return shards


def push(run_dir: Path, repo_id: str, *, token_env: str = "HF_TOKEN", private: bool = False,
         commit_message: str | None = None, max_shard_bytes: int = MAX_SHARD_BYTES, allow_unscrubbed: bool = False) -> dict:
    """Create the dataset repository `repo_id` if needed and commit the export to it, deleting data files of an
    earlier push that this one does not have (so a re-shard never duplicates rows); returns the push's record.
    Rows imported from users' data that no PII pass went over are refused unless `allow_unscrubbed`
    (pipeline.ship.scrubbing)."""
    from pipeline.ship import scrubbing

    run_dir = Path(run_dir)
    uploads = files(run_dir, max_shard_bytes)  # nothing exported: that error first
    if not allow_unscrubbed and (why := scrubbing.refusal(run_dir)):
        raise PublishError(why)
    record = commit_files(repo_id, uploads, token_env=token_env, private=private,
                          message=commit_message or f"aligndata: export of run {run_dir.name}", replace_data=True)
    write_json(record, run_dir / "publish.json")
    return record


def commit_files(repo_id: str, uploads: dict[str, Path | bytes], *, token_env: str = "HF_TOKEN", private: bool = False,
                 message: str, replace_data: bool = False) -> dict:
    """One commit of `uploads` (repository path → local file or bytes) to the dataset `repo_id`, created if needed;
    with `replace_data`, data files of the repository that `uploads` lacks are deleted in the same commit.
    Returns the commit's record: repository, endpoint, user, commit, url, files, message (never the token)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    token = os.environ.get(token_env)
    if not token:
        raise PublishError(f"no Hub token: set the environment variable {token_env} to a write token "
                           "(https://huggingface.co/settings/tokens); aligndata reads it only from the environment")
    if constants.HF_HUB_OFFLINE:
        raise PublishError("huggingface_hub is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): "
                           "unset both to push")
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "no response"
        raise PublishError(f"the Hub at {api.endpoint} refused the token in {token_env} (HTTP {status}); "
                           f"check that it is valid and has write access to {repo_id}") from None
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=local if isinstance(local, bytes) else str(local))
                      for path, local in uploads.items()]
        if replace_data:
            remote = [s.rfilename for s in api.dataset_info(repo_id).siblings or []]
            operations += [CommitOperationDelete(path_in_repo=path) for path in remote
                           if path.startswith(f"{DATA_DIR}/") and path not in uploads]
        commit = api.create_commit(repo_id, operations, repo_type="dataset", commit_message=message)
    except Exception as exc:  # HTTP errors, failed uploads, unreachable endpoint: one message, token removed
        raise PublishError(redact(f"pushing to {repo_id} at {api.endpoint} failed: {exc}", [token])) from None
    return {"repo_id": repo_id, "endpoint": api.endpoint, "user": user, "commit": commit.oid,
            "url": commit.commit_url, "files": sorted(uploads), "message": message}
