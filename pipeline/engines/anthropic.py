"""The Anthropic Messages API through the official `anthropic` SDK (Anthropic's API, or a server that speaks it, such
as vLLM serve's /v1/messages).

Requests are conversations (pipeline.engines.Chat): system turns go to `system`, the opening of the assistant's reply
is a final assistant message, which the Messages API continues (a prefill; vLLM's /v1/messages answers it anew).
Structured output is `output_config`'s JSON schema. The API has no seeds and no logprobs: scorers that read the
expected rating from logprobs fall back to the rated digit (pipeline.score.ratings), on the record in the card.
Sampling goes in the body as the API names it (temperature, top_p).

Options: concurrency, max_concurrency, rpm, tpm, timeout, retries, api_key_env, batch, batch_poll, as for openai-chat
(pipeline.engines.openai_chat); api_key_env defaults to ANTHROPIC_API_KEY when no --base-url is given.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from pipeline.engines import Chat, Completion, EngineSpec, EngineUnavailable, Sampling
from pipeline.engines.hosted import RAW_TEXT, AdaptiveLimit, RawTextUnsupported, answer, sdk_failure
from pipeline.engines.usage import Usage

STOP_REASONS = {"max_tokens": "length", "model_context_window_exceeded": "length"}  # all others finish as "stop"


class AnthropicEngine:
    supports_logits_processors = False
    sends_conversations = True
    has_logprobs = False

    def __init__(self, spec: EngineSpec):
        import anthropic
        import httpx2

        opts = spec.opts
        key_env = opts.get("api_key_env") or (None if spec.base_url else "ANTHROPIC_API_KEY")
        key = os.environ.get(str(key_env)) if key_env else "EMPTY"
        if not key:
            raise EngineUnavailable(f"the environment variable {key_env} (api_key_env) is not set: export it with the "
                                    "Anthropic API key")
        self.spec, self.model_name, self.template = spec, spec.model, None
        self.context_length = None
        self.usage = Usage()
        self.limit = AdaptiveLimit(int(opts.get("concurrency", 8)), int(opts.get("max_concurrency", 64)),
                                   rpm=opts.get("rpm"), tpm=opts.get("tpm"))
        http = httpx2.Client(limits=httpx2.Limits(max_connections=self.limit.maximum),
                             event_hooks={"response": [lambda response: self.limit.saw(response.status_code)]})
        # an explicit timeout also lifts the SDK's refusal of non-streamed requests over ~21k max_tokens
        self.client = anthropic.Anthropic(base_url=spec.base_url, api_key=key, http_client=http,
                                          max_retries=int(opts.get("retries", 3)), timeout=float(opts.get("timeout", 600)))
        self.batch = bool(opts.get("batch", False))

    def count_tokens(self, texts) -> None:
        return None

    def prompt_logprobs(self, prompts):
        raise RawTextUnsupported(RAW_TEXT.format(backend=self.spec.backend))

    def params(self, request: Chat, sampling: Sampling) -> dict:
        """The messages.create parameters of one request (also a batch request's params)."""
        if not isinstance(request, Chat):
            raise RawTextUnsupported(RAW_TEXT.format(backend=self.spec.backend))
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        messages = [{"role": m["role"], "content": m["content"]} for m in request.messages if m["role"] != "system"]
        if request.opening:
            messages.append({"role": "assistant", "content": request.opening})
        params: dict = {"model": self.spec.model, "max_tokens": sampling.max_tokens, "messages": messages,
                        "temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.temperature == 0.0:
            params.pop("top_p")  # greedy: the API refuses both set at once on some models
        if system:
            params["system"] = system
        if sampling.stop:
            params["stop_sequences"] = [s for s in sampling.stop if s.strip()]
        if sampling.json_schema:
            params["output_config"] = {"format": {"type": "json_schema", "schema": json.loads(sampling.json_schema_text)}}
        return params

    @staticmethod
    def completion(message: dict) -> Completion:
        """A Completion from a Messages response (the SDK's object or a batch result's message, as a dict)."""
        text = "".join(block.get("text", "") for block in message.get("content") or [] if block.get("type") == "text")
        usage = message.get("usage") or {}
        return Completion(text=text, finish_reason=STOP_REASONS.get(message.get("stop_reason") or "", "stop"),
                          n_tokens=int(usage.get("output_tokens") or 0), prompt_tokens=int(usage.get("input_tokens") or 0))

    def _one(self, request: tuple, sampling: Sampling) -> Completion:
        params = self.params(request[1], sampling)
        extra = {key: params.pop(key) for key in ("temperature", "top_p", "output_config") if key in params}
        try:
            message = self.client.messages.create(**params, extra_body=extra)
        except Exception as exc:  # noqa: BLE001 - every SDK error is a failed request of this row
            return sdk_failure(exc)
        return self.completion(message.model_dump())

    def generate(self, requests: Sequence, sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        from pipeline.engines.batches import run_anthropic_batch

        # seeds: the API has none; n stays n requests
        return answer(self, requests, sampling, seeds, check=lambda r: self.params(r, sampling), run_batch=run_anthropic_batch)

    def close(self) -> None:
        self.client.close()
