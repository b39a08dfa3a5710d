import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.engines import EngineSpec, load_engine  # noqa: E402


@pytest.fixture
def fake_spec():
    return EngineSpec.make("fake", "fake-model")


@pytest.fixture(scope="session")
def llamacpp():
    return load_engine(EngineSpec.make("llamacpp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1 serving the SmolLM2 GGUF; stop()/start() for failure tests."""

    def __init__(self):
        from pipeline.models import smollm2_gguf

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", "2048", "--logits_all", "true", "--model_alias", "smollm2"]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, "llama_cpp.server exited during start-up"
            try:
                if httpx.get(f"{self.url}/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start in 60 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def llama_server():
    server = LlamaServer().start()
    yield server
    server.stop()


@pytest.fixture
def vllm_engine():
    # load_engine's cache makes this one engine per session, rebuilt if a step with another vLLM model closed it
    return load_engine(EngineSpec.make("vllm"))
