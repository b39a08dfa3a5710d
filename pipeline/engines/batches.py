"""Provider batch APIs: with the `batch=true` option, an engine window of a chat engine becomes one batch (OpenAI's
Batch API: a JSONL file uploaded, a batch created and polled, its output and error files read; Anthropic's Message
Batches), at the providers' batch price.

The batch id is written to the stage directory before the first poll (DIR/<stage>/batches/<key>.json, `key` the
hash of the window's requests, so the same window finds it again): a run killed while it waits re-attaches to its
batch instead of paying twice. Requests that failed for a reason worth retrying (429, 5xx, expiry, a batch that
failed whole) are sent again as a smaller batch, up to MAX_ROUNDS batches in all; the others fail their rows
(engine_error:batch_<reason>), counted against max_failure_rate like any failed request. A batch cancelled
(`aligndata batches cancel DIR`) fails what it did not finish; the next run sends that again.
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import time
from pathlib import Path

from pipeline.engines import Completion, Sampling, failed

# The runner sets this to DIR/<stage>/batches for each stage; outside a run, batch records live in memory only.
BATCH_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("aligndata_batch_dir", default=None)
MAX_ROUNDS = 3
RETRYABLE = {408, 409, 429, 500, 502, 503, 504, 529}
OPENAI_DONE = {"completed", "failed", "expired", "cancelled"}


def records(batch_dir: Path) -> list[dict]:
    """The batch records of a stage directory's batches/ folder, each with its file name as `key`."""
    return [json.loads(p.read_text()) | {"key": p.stem} for p in sorted(Path(batch_dir).glob("*.json"))]


def _save(path: Path | None, record: dict) -> None:
    if path is not None:
        from pipeline.core.rundir import write_json

        write_json(record, path)


def run_rounds(provider: str, items: dict[str, dict], submit, poll, collect, poll_seconds: float) -> dict[str, Completion]:
    """Each custom id's Completion, from at most MAX_ROUNDS batches; `submit(items) -> batch id`, `poll(id) -> (status,
    done)`, `collect(id) -> {custom id: Completion | ("retry", reason)}`."""
    key = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]
    folder = BATCH_DIR.get()
    path = folder / f"{key}.json" if folder is not None else None
    record = json.loads(path.read_text()) if path is not None and path.exists() else {"provider": provider, "rounds": []}
    loaded = len(record["rounds"])
    results: dict[str, Completion | tuple] = {}
    for number in range(MAX_ROUNDS):
        if number < len(record["rounds"]):
            current = record["rounds"][number]  # a batch of an earlier run of this window: re-attach
        else:
            todo = [cid for cid in items if not isinstance(results.get(cid), Completion)]
            if not todo:
                break
            current = {"batch_id": submit({cid: items[cid] for cid in todo}), "custom_ids": todo, "status": "submitted",
                       "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            record["rounds"].append(current)
            _save(path, record)  # before the first poll: a killed run finds it
        while True:
            status, done = poll(current["batch_id"])
            if status != current["status"]:
                current["status"] = status
                _save(path, record)
            if done:
                break
            time.sleep(poll_seconds)
        if status in ("cancelled", "canceled") and number >= loaded:
            results.update({cid: failed("batch_cancelled: the batch was cancelled; run again to send it anew")
                            for cid in current["custom_ids"] if not isinstance(results.get(cid), Completion)})
            break
        collected = collect(current["batch_id"])
        for cid in current["custom_ids"]:
            results[cid] = collected.get(cid, ("retry", f"batch_{status}: no result for {cid}"))
        if all(isinstance(results.get(cid), Completion) for cid in items):
            break
    rounds = len(record["rounds"])
    return {cid: r if isinstance(r, Completion) else failed(f"{r[1]} (still failing after {rounds} batches)")
            for cid, r in ((cid, results.get(cid, ("retry", "batch_unsent: never sent"))) for cid in items)}


# ---- OpenAI Batch API ------------------------------------------------------------------------------------

def run_openai_batch(engine, flat_requests: list, sampling: Sampling) -> list[Completion]:
    """The window's requests as OpenAI batches of /v1/chat/completions lines (engine: OpenAIChatEngine)."""
    items = {}
    for i, (_, request, seed) in enumerate(flat_requests):
        body = engine.body(request, sampling, seed)
        items[f"r{i}"] = {**{k: v for k, v in body.items() if k != "extra_body"}, **body.get("extra_body", {})}
    client = engine.client

    def submit(todo: dict) -> str:
        lines = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
                        + "\n" for cid, body in todo.items())
        uploaded = client.files.create(file=("aligndata-batch.jsonl", lines.encode()), purpose="batch")
        return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h", metadata={"made_by": "aligndata"}).id

    def poll(batch_id: str) -> tuple[str, bool]:
        status = client.batches.retrieve(batch_id).status
        return status, status in OPENAI_DONE

    def collect(batch_id: str) -> dict:
        batch, found = client.batches.retrieve(batch_id), {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                entry = json.loads(line)
                response, error = entry.get("response") or {}, entry.get("error")
                status = response.get("status_code")
                if status == 200 and response.get("body"):
                    found[entry["custom_id"]] = engine.completion(response["body"], sampling)
                elif status in RETRYABLE or (status is None and error):
                    found[entry["custom_id"]] = ("retry", f"batch_http_{status or 'error'}: {json.dumps(error)[:200]}")
                else:
                    found[entry["custom_id"]] = failed(f"http_{status}: {json.dumps(response.get('body') or error)[:300]}")
        return found

    done = run_rounds("openai", items, submit, poll, collect, float(engine.spec.opts.get("batch_poll", 30)))
    return [done[f"r{i}"] for i in range(len(flat_requests))]


# ---- Anthropic Message Batches ----------------------------------------------------------------------------

def run_anthropic_batch(engine, flat_requests: list, sampling: Sampling) -> list[Completion]:
    """The window's requests as Anthropic message batches (engine: AnthropicEngine)."""
    items = {f"r{i}": engine.params(request, sampling) for i, (_, request, _) in enumerate(flat_requests)}
    batches = engine.client.messages.batches

    def submit(todo: dict) -> str:
        return batches.create(requests=[{"custom_id": cid, "params": params} for cid, params in todo.items()]).id

    def poll(batch_id: str) -> tuple[str, bool]:
        status = batches.retrieve(batch_id).processing_status
        return status, status == "ended"

    def collect(batch_id: str) -> dict:
        found = {}
        for entry in batches.results(batch_id):
            result = entry.result
            if result.type == "succeeded":
                found[entry.custom_id] = engine.completion(result.message.model_dump())
            elif result.type == "errored":
                kind = result.error.error.type
                reason = f"batch_{kind}: {result.error.error.message[:200]}"
                found[entry.custom_id] = ("retry", reason) if kind in ("overloaded_error", "api_error", "rate_limit_error") \
                    else failed(reason)
            elif result.type == "expired":
                found[entry.custom_id] = ("retry", "batch_expired: the batch expired before this request ran")
            else:
                found[entry.custom_id] = failed("batch_cancelled: the batch was cancelled; run again to send it anew")
        return found

    done = run_rounds("anthropic", items, submit, poll, collect, float(engine.spec.opts.get("batch_poll", 30)))
    return [done[f"r{i}"] for i in range(len(flat_requests))]
