"""A loopback provider for batch tests: OpenAI's Files and Batches endpoints and Anthropic's Message Batches, each
request of a batch answered by a real chat server (llama_cpp.server's /v1/chat/completions) when the batch runs.

Neither vLLM nor llama.cpp serves a batch API, and no PyPI package ships one to test against, so this stdlib server
plays the provider: it stores uploaded files, runs a batch in a thread when it is released (`hold` keeps batches
in progress, so a test can kill its client mid-poll), and can fail chosen requests in their first batch (`fail_once`,
a 500 line), expire a batch after some requests (`expire_after`), or be cancelled. Every create is counted.
"""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FakeBatchProvider:
    """`with FakeBatchProvider(upstream) as provider:` (upstream: an OpenAI-compatible /v1 URL); `provider.url` is
    the OpenAI base URL (…/v1) and `provider.anthropic_url` the Anthropic one."""

    def __init__(self, upstream: str, *, hold: bool = False, fail_once: set[str] = frozenset(), expire_after: int | None = None):
        self.upstream, self.hold, self.fail_once, self.expire_after = upstream.rstrip("/"), hold, set(fail_once), expire_after
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.created: list[dict] = []  # every batch create, in order: {"id", "kind", "custom_ids"}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        port = self.server.server_address[1]
        self.url, self.anthropic_url = f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.hold = False
        self.server.shutdown()
        self.server.server_close()

    # ---- running a batch against the upstream chat server ----

    def _answer(self, body: dict) -> tuple[int, dict]:
        response = httpx.post(f"{self.upstream}/chat/completions", json=body, timeout=300)
        return response.status_code, response.json()

    def _run(self, batch: dict) -> None:
        while self.hold and batch["status"] not in ("cancelling", "canceling"):
            time.sleep(0.05)
        results = []
        for number, (cid, body) in enumerate(batch["requests"]):
            if batch["status"] in ("cancelling", "canceling"):
                break
            if self.expire_after is not None and number >= self.expire_after and not batch.get("retry"):
                batch["expired"] = True
                break
            if cid in self.fail_once and not batch.get("retry"):
                results.append((cid, 500, {"error": {"message": "scripted failure", "type": "server_error"}}))
                continue
            results.append((cid, *self._answer(body)))
        batch["results"] = results
        cancelled = batch["status"] in ("cancelling", "canceling")
        batch["status"] = {"openai": "cancelled" if cancelled else "expired" if batch.get("expired") else "completed",
                           "anthropic": "ended"}[batch["kind"]]
        batch["cancelled"] = cancelled

    def _start(self, kind: str, requests: list[tuple[str, dict]]) -> dict:
        with self.lock:
            retry = any(kind == c["kind"] and set(cid for cid, _ in requests) <= set(c["custom_ids"]) for c in self.created)
            batch = {"id": f"batch_{uuid.uuid4().hex[:12]}", "kind": kind, "requests": requests, "retry": retry,
                     "status": "in_progress", "created_at": int(time.time())}
            self.batches[batch["id"]] = batch
            self.created.append({"id": batch["id"], "kind": kind, "custom_ids": [cid for cid, _ in requests]})
        threading.Thread(target=self._run, args=(batch,), daemon=True).start()
        return batch

    # ---- the wire formats ----

    def _openai_batch(self, batch: dict) -> dict:
        counts = {"total": len(batch["requests"]), "completed": sum(s == 200 for _, s, _ in batch.get("results", [])),
                  "failed": sum(s != 200 for _, s, _ in batch.get("results", []))}
        out = {"id": batch["id"], "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": batch["file"],
               "completion_window": "24h", "status": batch["status"], "created_at": batch["created_at"],
               "request_counts": counts, "output_file_id": None, "error_file_id": None}
        if "results" in batch:
            good = [r for r in batch["results"] if r[1] == 200]
            bad = [r for r in batch["results"] if r[1] != 200]
            for name, rows in (("output_file_id", good), ("error_file_id", bad)):
                if rows:
                    file_id = f"file-{batch['id']}-{name[:3]}"
                    self.files[file_id] = "".join(json.dumps(
                        {"id": f"req_{cid}", "custom_id": cid, "response": {"status_code": status, "body": body},
                         "error": None if status == 200 else body.get("error")}) + "\n" for cid, status, body in rows).encode()
                    out[name] = file_id
        return out

    def _anthropic_batch(self, batch: dict) -> dict:
        results = batch.get("results")
        ended = batch["status"] == "ended"
        done = {cid for cid, _, _ in results or []}
        counts = {"processing": 0 if ended else len(batch["requests"]),
                  "succeeded": sum(s == 200 for _, s, _ in results or []),
                  "errored": sum(s != 200 for _, s, _ in results or []),
                  "canceled": len(batch["requests"]) - len(done) if ended and batch.get("cancelled") else 0,
                  "expired": len(batch["requests"]) - len(done) if ended and not batch.get("cancelled") else 0}
        return {"id": batch["id"], "type": "message_batch", "processing_status": batch["status"], "request_counts": counts,
                "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-02T00:00:00Z", "ended_at": None,
                "cancel_initiated_at": None, "archived_at": None,
                "results_url": f"{self.anthropic_url}/v1/messages/batches/{batch['id']}/results" if ended else None}

    def _anthropic_results(self, batch: dict) -> bytes:
        lines, done = [], set()
        for cid, status, body in batch["results"]:
            done.add(cid)
            if status == 200:
                choice, usage = body["choices"][0], body.get("usage") or {}
                message = {"id": body.get("id", "msg"), "type": "message", "role": "assistant", "model": body.get("model", "m"),
                           "content": [{"type": "text", "text": choice["message"]["content"] or ""}],
                           "stop_reason": "max_tokens" if choice["finish_reason"] == "length" else "end_turn",
                           "stop_sequence": None, "usage": {"input_tokens": usage.get("prompt_tokens", 0),
                                                            "output_tokens": usage.get("completion_tokens", 0)}}
                lines.append({"custom_id": cid, "result": {"type": "succeeded", "message": message}})
            else:
                lines.append({"custom_id": cid, "result": {"type": "errored", "error": {
                    "type": "error", "error": {"type": "api_error", "message": "scripted failure"}}}})
        for cid, _ in batch["requests"]:
            if cid not in done:
                lines.append({"custom_id": cid, "result": {"type": "canceled" if batch.get("cancelled") else "expired"}})
        return "".join(json.dumps(line) + "\n" for line in lines).encode()

    @staticmethod
    def _to_chat(params: dict) -> dict:
        """An Anthropic request as the upstream's chat.completions body."""
        messages = ([{"role": "system", "content": params["system"]}] if params.get("system") else []) + params["messages"]
        body = {"model": params["model"], "messages": messages, "max_tokens": params["max_tokens"]}
        for key in ("temperature", "top_p"):
            if key in params:
                body[key] = params[key]
        if params.get("stop_sequences"):
            body["stop"] = params["stop_sequences"]
        return body

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: object, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if m := re.fullmatch(r"/v1/files/([^/]+)/content", path):
                    return self._reply(200, None, provider.files[m[1]])
                if m := re.fullmatch(r"/v1/batches/([^/]+)", path):
                    return self._reply(200, provider._openai_batch(provider.batches[m[1]]))
                if m := re.fullmatch(r"/v1/messages/batches/([^/]+)/results", path):
                    return self._reply(200, None, provider._anthropic_results(provider.batches[m[1]]))
                if m := re.fullmatch(r"/v1/messages/batches/([^/]+)", path):
                    return self._reply(200, provider._anthropic_batch(provider.batches[m[1]]))
                self._reply(404, {"error": {"message": f"no route {path}"}})

            def do_POST(self):  # noqa: N802
                path, raw = self.path.split("?")[0], self._body()
                if path == "/v1/files":  # multipart: the file's bytes are between the headers' blank line and the boundary
                    boundary = self.headers["Content-Type"].split("boundary=")[1].encode()
                    part = next(p for p in raw.split(b"--" + boundary) if b'name="file"' in p)
                    content = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
                    file_id = f"file-{uuid.uuid4().hex[:12]}"
                    provider.files[file_id] = content
                    return self._reply(200, {"id": file_id, "object": "file", "bytes": len(content), "created_at": 0,
                                             "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})
                if path == "/v1/batches":
                    body = json.loads(raw)
                    lines = [json.loads(line) for line in provider.files[body["input_file_id"]].decode().splitlines() if line]
                    batch = provider._start("openai", [(line["custom_id"], line["body"]) for line in lines])
                    batch["file"] = body["input_file_id"]
                    return self._reply(200, provider._openai_batch(batch))
                if m := re.fullmatch(r"/v1/batches/([^/]+)/cancel", path):
                    batch = provider.batches[m[1]]
                    batch["status"] = "cancelling" if batch["status"] == "in_progress" else batch["status"]
                    return self._reply(200, provider._openai_batch(batch))
                if path == "/v1/messages/batches":
                    requests = [(r["custom_id"], provider._to_chat(r["params"])) for r in json.loads(raw)["requests"]]
                    return self._reply(200, provider._anthropic_batch(provider._start("anthropic", requests)))
                if m := re.fullmatch(r"/v1/messages/batches/([^/]+)/cancel", path):
                    batch = provider.batches[m[1]]
                    batch["status"] = "canceling" if batch["status"] == "in_progress" else batch["status"]
                    return self._reply(200, provider._anthropic_batch(batch))
                self._reply(404, {"error": {"message": f"no route {path}"}})

        return Handler
