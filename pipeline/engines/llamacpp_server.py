"""llama-cpp-python's OpenAI-compatible server on loopback, started the way `--engine openai` needs it.

`server_command()` is the exact command the README shows: the model alias is the name `--model` must use
(the openai engine checks `/v1/models` on start), `--logits_all true` lets `echo` return prompt logprobs
(IFD, scorers), and the context size matches the in-process engine's default.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx

from pipeline.engines.models import DEFAULT_MODEL, resolve_model


def server_command(model: str = DEFAULT_MODEL, *, alias: str = DEFAULT_MODEL, port: int = 8000, n_ctx: int = 2048,
                   python: str = sys.executable) -> list[str]:
    """`python -m llama_cpp.server ...` serving `model` (a GGUF path or "smollm2") as `alias` on 127.0.0.1."""
    return [python, "-m", "llama_cpp.server", "--model", resolve_model("llamacpp", model), "--model_alias", alias,
            "--n_ctx", str(n_ctx), "--logits_all", "true", "--host", "127.0.0.1", "--port", str(port)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """A llama_cpp.server subprocess on a free loopback port; `url` is its /v1 base. start()/stop() may repeat
    (same port), so tests can kill it mid-stage and bring it back."""

    def __init__(self, model: str = DEFAULT_MODEL, *, alias: str = DEFAULT_MODEL, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = server_command(model, alias=alias, port=self.port)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "LlamaServer":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited during start-up with code {self.proc.returncode}: "
                                   f"{' '.join(self.cmd)}")
            try:
                if httpx.get(f"{self.url}/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"llama_cpp.server did not answer in {timeout:.0f} s: {' '.join(self.cmd)}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
