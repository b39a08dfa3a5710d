"""Any OpenAI-compatible server (vllm serve, llama.cpp server, SGLang, TGI) through `/v1/completions`.

Raw prompts go to `/v1/completions` because Magpie needs text that is *not* wrapped in a chat
template; the chat template comes from `spec.template` (a .gguf, an HF directory or an OFFICIAL key),
defaulting to the offline model's GGUF when the model is "smollm2".

On start the engine asks the server's `/v1/models` which names it serves: an unreachable server or a
`--model` it does not serve is an EngineUnavailable error naming what to pass instead.

Options: concurrency (8 requests in flight), timeout (120 s per request), retries (3, exponential
backoff from `backoff` = 0.5 s, on timeouts, connection errors, HTTP 429 and 5xx),
api_key_env (name of the environment variable holding the key; the key itself is never stored).
"""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx

from pipeline.engines.templates import load_template
from pipeline.engines import Completion, EngineSpec, EngineUnavailable, Sampling, expand_requests, failed, regroup, templated
from pipeline.engines.usage import Usage
from pipeline.engines.models import DEFAULT_MODEL, smollm2_gguf

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
# How servers say a prompt does not fit (OpenAI and llama_cpp.server: context_length_exceeded; vLLM: "maximum context
# length"; llama.cpp's native server: "exceed context")
CONTEXT_TOO_LONG = re.compile(r"context_length_exceeded|maximum context length|exceeds? (the )?context", re.I)


class OpenAIEngine:
    def __init__(self, spec: EngineSpec, transport: httpx.BaseTransport | None = None):
        if not spec.base_url:
            raise ValueError("the openai engine needs base_url, e.g. http://127.0.0.1:8000/v1")
        self.spec = spec
        opts = spec.opts
        self.concurrency = int(opts.get("concurrency", 8))
        self.retries = int(opts.get("retries", 3))
        self.backoff = float(opts.get("backoff", 0.5))
        headers = {}
        if opts.get("api_key_env"):
            key = os.environ.get(str(opts["api_key_env"]))
            if not key:
                raise ValueError(f"environment variable {opts['api_key_env']} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=spec.base_url.rstrip("/"), headers=headers,
                                   timeout=httpx.Timeout(float(opts.get("timeout", 120))),
                                   limits=httpx.Limits(max_connections=self.concurrency), transport=transport)
        self._check_served_model()
        template_source = spec.template or (str(smollm2_gguf()) if spec.model == DEFAULT_MODEL else None)
        if template_source is None:
            raise EngineUnavailable(f"the openai engine cannot read {spec.model!r}'s chat template from the server: "
                                    "pass --template with a .gguf, an HF model directory or an official family key")
        self.template = load_template(template_source)
        self.model_name = spec.model
        self.context_length = None  # the server's; an over-long prompt is its 400, failed as too_long
        self.usage = Usage()

    def count_tokens(self, texts: Sequence[str]) -> None:
        return None

    def _check_served_model(self) -> None:
        """Fail early, with the names to use, when the server is down or does not serve `spec.model`."""
        url = self.spec.base_url
        try:
            response = self.client.get("/models", timeout=10)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"no OpenAI-compatible server answers at {url} ({type(exc).__name__}); start it "
                                    "first (README: Engines) or fix --base-url") from exc
        if response.status_code != 200:  # a server without /v1/models: requests will tell
            return
        try:
            served = [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            return
        if served and self.spec.model not in served:
            raise EngineUnavailable(f"the server at {url} serves {served}, not {self.spec.model!r}: pass --model "
                                    f"{served[0]}, or start the server with that name (llama_cpp.server: --model_alias "
                                    f"{self.spec.model}; vllm serve: --served-model-name {self.spec.model})")

    def _post(self, body: dict) -> tuple[dict | None, str | None]:
        """POST /completions with retries; returns (json, None) or (None, "kind: message")."""
        error = "unknown"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.client.post("/completions", json=body)
            except httpx.TimeoutException as exc:
                error = f"timeout: {type(exc).__name__}"
                continue
            except httpx.TransportError as exc:
                error = f"connection: {type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRYABLE_STATUS:
                error = f"http_{response.status_code}: {response.text[:200]}"
                continue
            if response.status_code == 400 and CONTEXT_TOO_LONG.search(response.text):
                return None, f"too_long: {response.text[:300]}"  # the prompt does not fit: its own row, not retried
            if response.status_code != 200:
                return None, f"http_{response.status_code}: {response.text[:300]}"
            try:
                return response.json(), None
            except ValueError:
                error = f"malformed: response is not JSON: {response.text[:200]}"
        return None, error

    def _one(self, prompt: str, sampling: Sampling, seed: int | None) -> Completion:
        body = {"model": self.spec.model, "prompt": prompt, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "n": 1}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if seed is not None:
            body["seed"] = seed
        if sampling.logprobs:
            body["logprobs"] = sampling.logprobs
        data, error = self._post(body)
        if error:
            return failed(error)
        try:
            choice = data["choices"][0]
            text = choice["text"]
            if not isinstance(text, str):
                raise TypeError("text is not a string")
            logprobs = None
            if sampling.logprobs:
                logprobs = [{tok: float(lp) for tok, lp in (top or {}).items()}
                            for top in choice["logprobs"]["top_logprobs"]]
            usage = data.get("usage") or {}
            return Completion(text=text, finish_reason=choice.get("finish_reason") or "stop",
                              n_tokens=int(usage.get("completion_tokens") or 0), logprobs=logprobs,
                              prompt_tokens=int(usage.get("prompt_tokens") or 0))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return failed(f"malformed: {type(exc).__name__}: {exc}")

    def generate(self, requests: Sequence, sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        prompts, sampling = templated(self.template, requests, sampling)
        flat_requests = expand_requests(prompts, sampling, seeds)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            flat = list(pool.map(lambda r: self._one(r[1], sampling, r[2]), flat_requests))
        self.usage.add(flat)
        return regroup(prompts, sampling, flat)

    def prompt_logprobs(self, prompts: Sequence[str]) -> list[list[float] | None]:
        def one(prompt):
            data, error = self._post({"model": self.spec.model, "prompt": prompt, "max_tokens": 1,
                                      "temperature": 0.0, "echo": True, "logprobs": 1})
            if error:
                return None
            try:
                values = data["choices"][0]["logprobs"]["token_logprobs"]
                n_generated = int(data["usage"]["completion_tokens"])
                prompt_values = values[: len(values) - n_generated] if n_generated else values
                return [float(v) for v in prompt_values[1:]]
            except (KeyError, IndexError, TypeError, ValueError):
                return None

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, prompts))
