"""Any `/v1/chat/completions` API through the official `openai` SDK: OpenAI, vLLM serve, llama.cpp's server, SGLang, a
LiteLLM proxy, Gemini's and Together's OpenAI-compatible endpoints.

Requests are conversations (pipeline.engines.Chat); a raw-text request is a one-line error naming the engines that
take one. The opening of an assistant reply is sent as a final assistant message the server continues where the
server can (`prefill=continue`: vLLM and SGLang's continue_final_message); elsewhere (`prefill=none`, the default:
OpenAI and llama.cpp's server answer a trailing assistant turn anew) it is left out, on the record as a StageWarning.
Structured output is `response_format` with the JSON schema (`json_mode=json_schema`; llama.cpp's server wants
`json_object`); logprobs are `top_logprobs` (at most 20). A server takes at most four stop strings: more are applied
to the text here. Seeds go with every request.

Options: concurrency (8 in flight to start), max_concurrency (64), rpm / tpm (caps per minute), timeout (120 s),
retries (the SDK's max_retries, 3: 408/409/429/5xx, timeouts and connection errors, honouring retry-after),
api_key_env (the variable holding the key; none for a local server), prefill, json_mode, batch (true: each engine
window is one provider batch; pipeline.engines.batches), batch_poll (seconds between polls, 30).
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Sequence

import httpx

from pipeline.core.rundir import StageWarning
from pipeline.engines import Chat, Completion, EngineSpec, EngineUnavailable, Sampling
from pipeline.engines.hosted import RAW_TEXT, AdaptiveLimit, RawTextUnsupported, answer, sdk_failure
from pipeline.engines.usage import Usage

MAX_SERVER_STOPS = 4  # OpenAI's and vLLM's limit on `stop`
MAX_TOP_LOGPROBS = 20


def _api_key(spec: EngineSpec) -> str:
    name = spec.opts.get("api_key_env")
    if not name:
        return "EMPTY"  # local servers take any key; the SDK wants one
    key = os.environ.get(str(name))
    if not key:
        raise EngineUnavailable(f"the environment variable {name} (api_key_env) is not set: export it with the API key")
    return key


def cut_at_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest of `stops`, and whether one was found.

    >>> cut_at_stops("a. b? c", [".", "?"]), cut_at_stops("abc", ["x"])
    (('a', True), ('abc', False))
    """
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


class OpenAIChatEngine:
    supports_logits_processors = False
    sends_conversations = True

    def __init__(self, spec: EngineSpec):
        import openai

        if not spec.base_url and not spec.opts.get("api_key_env"):
            raise EngineUnavailable("the openai-chat engine needs --base-url (a local server) or --api-key-env (the "
                                    "variable with an OpenAI key)")
        opts = spec.opts
        self.spec, self.model_name, self.template = spec, spec.model, None
        self.context_length = None  # the server's; an over-long prompt is its 400, failed as too_long
        self.usage = Usage()
        self.limit = AdaptiveLimit(int(opts.get("concurrency", 8)), int(opts.get("max_concurrency", 64)),
                                   rpm=opts.get("rpm"), tpm=opts.get("tpm"))
        self.prefill = str(opts.get("prefill", "none"))
        self.prefills = self.prefill == "continue"  # whether a Chat's opening is continued (else left out)
        self.json_mode = str(opts.get("json_mode", "json_schema"))
        if self.prefill not in ("none", "continue") or self.json_mode not in ("json_schema", "json_object"):
            raise EngineUnavailable(f"openai-chat options: prefill is none or continue (got {self.prefill!r}), json_mode "
                                    f"is json_schema or json_object (got {self.json_mode!r})")
        http = httpx.Client(limits=httpx.Limits(max_connections=self.limit.maximum),
                            event_hooks={"response": [lambda response: self.limit.saw(response.status_code)]})
        self.client = openai.OpenAI(base_url=spec.base_url, api_key=_api_key(spec), http_client=http,
                                    max_retries=int(opts.get("retries", 3)), timeout=float(opts.get("timeout", 120)))
        self.batch = bool(opts.get("batch", False))

    def count_tokens(self, texts) -> None:
        return None

    def prompt_logprobs(self, prompts):
        raise RawTextUnsupported(RAW_TEXT.format(backend=self.spec.backend))

    def body(self, request: Chat, sampling: Sampling, seed: int | None) -> dict:
        """The chat.completions parameters of one request (also a batch line's body)."""
        if not isinstance(request, Chat):
            raise RawTextUnsupported(RAW_TEXT.format(backend=self.spec.backend))
        messages = [dict(m) for m in request.messages]
        body: dict = {"model": self.spec.model, "messages": messages, "max_tokens": sampling.max_tokens,
                      "temperature": sampling.temperature, "top_p": sampling.top_p}
        if request.opening and self.prefill == "continue":
            messages.append({"role": "assistant", "content": request.opening})
            body["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        if sampling.stop:
            body["stop"] = list(sampling.stop)[:MAX_SERVER_STOPS]
        if seed is not None:
            body["seed"] = seed
        if sampling.logprobs:
            body.update(logprobs=True, top_logprobs=min(sampling.logprobs, MAX_TOP_LOGPROBS))
        if sampling.json_schema:
            schema = json.loads(sampling.json_schema_text)
            body["response_format"] = ({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
                                       if self.json_mode == "json_schema" else {"type": "json_object", "schema": schema})
        return body

    def completion(self, response: dict, sampling: Sampling) -> Completion:
        """A Completion from a chat.completions response (the SDK's object or a batch line's body, as a dict)."""
        choice = response["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason") or "stop"
        text, stopped = cut_at_stops(text, sampling.stop[MAX_SERVER_STOPS:]) if len(sampling.stop) > MAX_SERVER_STOPS \
            else (text, False)
        logprobs = None
        if sampling.logprobs and (choice.get("logprobs") or {}).get("content"):
            logprobs = [{top["token"]: float(top["logprob"]) for top in step.get("top_logprobs") or []} or
                        {step["token"]: float(step["logprob"])} for step in choice["logprobs"]["content"]]
        usage = response.get("usage") or {}
        # reasoning models behind vLLM, SGLang and DeepSeek's API send their chain of thought apart from the content
        reasoning = choice["message"].get("reasoning_content") or choice["message"].get("reasoning") or None
        return Completion(text=text, finish_reason="length" if finish == "length" and not stopped else "stop",
                          n_tokens=int(usage.get("completion_tokens") or 0), logprobs=logprobs,
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          reasoning=reasoning if isinstance(reasoning, str) else None)

    def _one(self, request: tuple, sampling: Sampling) -> Completion:
        _, chat, seed = request
        body = self.body(chat, sampling, seed)
        try:
            response = self.client.chat.completions.create(**body)
        except Exception as exc:  # noqa: BLE001 - every SDK error is a failed request of this row
            return sdk_failure(exc)
        return self.completion(response.model_dump(), sampling)

    def generate(self, requests: Sequence, sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        from pipeline.engines.batches import run_openai_batch

        if self.prefill == "none" and any(isinstance(r, Chat) and r.opening for r in requests):
            warnings.warn(f"{self.spec.backend} ({self.spec.model}) cannot continue an opened assistant reply "
                          "(prefill=none): the opening was left out and the reply parsed as it came", StageWarning,
                          stacklevel=2)
        return answer(self, requests, sampling, seeds, check=lambda r: self.body(r, sampling, None),
                      run_batch=run_openai_batch)

    def close(self) -> None:
        self.client.close()
