"""Push a run's export to the Hugging Face Hub, or to any Hub-compatible server named by HF_ENDPOINT.

One commit holds the Parquet data (at the path the card's `configs` names), the dataset card and the run's
manifest. huggingface_hub skips files whose content the repository already has, so pushing the same export
again makes no new commit. The token comes from an environment variable and is never logged or written:
the push's record (`DIR/publish.json`) holds the repository, endpoint and commit only.
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.io import write_json
from pipeline.secrets import redact

DATA_PATH = "data/train-00000-of-00001.parquet"  # matches the card's configs: data/*.parquet


class PublishError(RuntimeError):
    """The push cannot be done as asked (no token, a refused token, nothing exported)."""


def files(run_dir: Path) -> dict[str, Path]:
    """What a push uploads: repository path → local file."""
    run_dir = Path(run_dir)
    wanted = {DATA_PATH: run_dir / "export" / "data.parquet", "README.md": run_dir / "export" / "README.md",
              "manifest.jsonl": run_dir / "manifest.jsonl"}
    missing = [str(path) for path in wanted.values() if not path.exists()]
    if missing:
        raise PublishError(f"nothing to publish in {run_dir}: missing {missing}; run `aligndata run --out {run_dir}` "
                           "(or a job that exports with a card) first")
    return wanted


def push(run_dir: Path, repo_id: str, *, token_env: str = "HF_TOKEN", private: bool = False,
         commit_message: str | None = None) -> dict:
    """Create the dataset repository `repo_id` if needed and commit the export to it; returns the push's record."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    run_dir = Path(run_dir)
    uploads = files(run_dir)
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
    message = commit_message or f"aligndata: export of run {run_dir.name}"
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for path, local in uploads.items()]
        commit = api.create_commit(repo_id, operations, repo_type="dataset", commit_message=message)
    except Exception as exc:  # HTTP errors, failed uploads, unreachable endpoint: one message, token removed
        raise PublishError(redact(f"pushing to {repo_id} at {api.endpoint} failed: {exc}", [token])) from None
    record = {"repo_id": repo_id, "endpoint": api.endpoint, "user": user, "commit": commit.oid,
              "url": commit.commit_url, "files": sorted(uploads), "message": message}
    write_json(record, run_dir / "publish.json")
    return record
