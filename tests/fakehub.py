"""A loopback Hub for tests: the endpoints huggingface_hub calls to create a dataset repository and commit files
to it (whoami, repos/create, repo info, validate-yaml, preupload, LFS batch + basic upload, NDJSON commit with
added, LFS and deleted files).

No PyPI package ships a Hub server one can push to (hf-local-hub has no server binary; olah is a read-only
mirror), so this stdlib server stands in. It checks tokens on every call, stores each repository's files on
disk under `root/<type>s/<namespace>/<name>/`, and keeps every commit (message, files) for assertions.
Not for production: no locking beyond one lock, no git, no revisions other than main.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Start with `with FakeHub(root, tokens={"hf_..."}) as hub:`; `hub.url` is the HF_ENDPOINT."""

    def __init__(self, root: Path, tokens: set[str]):
        self.root, self.tokens = Path(root), set(tokens)
        self.repos: dict[str, dict] = {}  # "datasets/ns/name" -> {"files": {path: bytes}, "commits": [...], "private": bool}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: object = None, headers: dict | None = None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                return auth.startswith("Bearer ") and auth[7:] in hub.tokens

            def _route(self, method: str):
                path, _, query = self.path.partition("?")
                hub.requests.append((method, path))
                presigned = path.startswith("/lfs-upload/") and query == f"sig={hub.sign(path)}"  # like an S3 URL
                if not (presigned or self._authorized()):
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                with hub.lock:
                    return hub.handle(self, method, path)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):
                self._route("PUT")

        return Handler

    # --- endpoints -------------------------------------------------------------------------------------------
    def handle(self, h, method: str, path: str):
        if path == "/api/whoami-v2":
            return h._reply(200, {"type": "user", "name": "tester", "orgs": [],
                                  "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(h._body())
            repo = f"{req.get('type', 'model')}s/{req.get('organization') or 'tester'}/{req['name']}"
            if repo in self.repos:
                return h._reply(409, {"error": "You already created this repo", "url": f"{self.url}/{repo}"})
            self.repos[repo] = {"files": {}, "commits": [], "private": bool(req.get("private"))}
            return h._reply(200, {"url": f"{self.url}/{repo}", "name": req["name"]})
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(h, json.loads(h._body())["content"])
        if m := re.fullmatch(r"/api/(\w+s)/([^/]+/[^/]+)/preupload/([^/]+)", path):
            files = self.repos[f"{m[1]}/{m[2]}"]["files"]
            out = []
            for f in json.loads(h._body())["files"]:
                lfs = f["path"].endswith(LFS_SUFFIXES)
                old = files.get(f["path"])
                oid = None if old is None else (hashlib.sha256(old).hexdigest() if lfs else git_blob_sha1(old))
                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            return h._reply(200, {"files": out, "commitOid": self._head(f"{m[1]}/{m[2]}")})
        if m := re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            objects = []
            for o in json.loads(h._body())["objects"]:
                entry = {"oid": o["oid"], "size": o["size"]}
                if o["oid"] not in self.lfs:
                    target = f"/lfs-upload/{o['oid']}"
                    entry["actions"] = {"upload": {"href": f"{self.url}{target}?sig={self.sign(target)}", "header": {}}}
                objects.append(entry)
            return h._reply(200, {"transfer": "basic", "objects": objects})
        if method == "PUT" and (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)):
            data = h._body()
            if hashlib.sha256(data).hexdigest() != m[1]:
                return h._reply(400, {"error": "sha256 mismatch"})
            self.lfs[m[1]] = data
            return h._reply(200, {})
        if method == "POST" and (m := re.fullmatch(r"/api/(\w+s)/([^/]+/[^/]+)/commit/([^/]+)", path)):
            return self._commit(h, f"{m[1]}/{m[2]}")
        if method == "GET" and (m := re.fullmatch(r"/api/(\w+s)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)):
            repo = f"{m[1]}/{m[2]}"
            if repo not in self.repos:
                return h._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return h._reply(200, {"id": m[2], "sha": self._head(repo), "private": self.repos[repo]["private"],
                                  "siblings": [{"rfilename": p} for p in sorted(self.repos[repo]["files"])]})
        return h._reply(404, {"error": f"fakehub: no route for {method} {path}"})

    def _validate_yaml(self, h, content: str):
        """The README's front matter must be a YAML mapping (the real Hub checks much more)."""
        import yaml

        match = re.match(r"\A---\n(.*?)\n---\n", content, re.S)
        try:
            metadata = yaml.safe_load(match[1]) if match else None
        except yaml.YAMLError as exc:
            metadata, problem = None, str(exc)
        else:
            problem = "the metadata is not a YAML mapping"
        if not isinstance(metadata, dict):
            return h._reply(400, {"errors": [{"message": problem}]})
        return h._reply(200, {"errors": [], "warnings": []})

    def sign(self, path: str) -> str:
        return hashlib.sha256(f"{id(self)}:{path}".encode()).hexdigest()[:16]

    def _head(self, repo: str) -> str | None:
        commits = self.repos[repo]["commits"]
        return commits[-1]["oid"] if commits else None

    def _commit(self, h, repo: str):
        lines = [json.loads(line) for line in h._body().decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        changed, deleted = {}, []
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                changed[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return h._reply(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                changed[value["path"]] = self.lfs[value["oid"]]
            elif line["key"] == "deletedFile":
                deleted.append(value["path"])
        state = self.repos[repo]
        state["files"].update(changed)
        for path in deleted:
            state["files"].pop(path, None)
            (self.root / repo / path).unlink(missing_ok=True)
        for path, data in changed.items():
            target = self.root / repo / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        oid = hashlib.sha1(json.dumps([self._head(repo), header, sorted(changed), deleted]).encode()).hexdigest()
        state["commits"].append({"oid": oid, "summary": header.get("summary"), "description": header.get("description"),
                                 "files": sorted(changed), "deleted": sorted(deleted)})
        return h._reply(200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})
