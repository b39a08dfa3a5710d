"""A deterministic engine for unit tests of stage logic. It never stands in for a real model in
integration tests: those run SmolLM2 on llama.cpp, an OpenAI-compatible server and vLLM.

Options:
    script: {prompt substring: text} — the first key found in a prompt decides the reply; else
            the reply is "fake <sha of prompt+seed>?". A list of texts gives completion j of a request the
            text at j (cycling), to plant different samples of one prompt.
    fail_every: make every k-th request fail with an "http_503" error.
    fail_on: [prompt substrings] — requests whose prompt contains one fail with an "http_503" error (and
            prompt_logprobs returns None for them), to script which rows fail.
    finish_reason: reported finish reason (default "stop").
    top_logprobs: {prompt substring: {token: logprob}} — the top-k returned at each generated position of
            a prompt containing the substring, when logprobs are asked for (else digits "1".."6" at 0.0).
    prompt_logprob: {prompt substring: value} — each prompt token's logprob (tokens = words) for prompts
            containing the substring; else -1.0.
    context_length: tokens (words) a prompt may have; longer prompts fail as "too_long" (default: no limit).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from pipeline.engines.templates import ChatTemplate, load_template
from pipeline.engines import Completion, EngineSpec, Sampling, expand_requests, failed, regroup, render, templated
from pipeline.engines.usage import Usage

FAKE_TEMPLATE = "chatml"


class FakeEngine:
    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.model_name = spec.model
        self.template: ChatTemplate = load_template(spec.template or FAKE_TEMPLATE)
        opts = spec.opts
        self.script: dict[str, str] = dict(opts.get("script", {}))
        self.fail_every = int(opts.get("fail_every", 0))
        self.fail_on: tuple[str, ...] = tuple(opts.get("fail_on", ()))
        self.finish_reason = opts.get("finish_reason", "stop")
        self.top_logprobs: dict[str, dict[str, float]] = dict(opts.get("top_logprobs", {}))
        self.prompt_logprob: dict[str, float] = dict(opts.get("prompt_logprob", {}))
        self.context_length: int | None = opts.get("context_length")
        self.usage = Usage()
        self.calls: list[tuple[int, Sampling]] = []  # (number of prompts, sampling) per generate call
        self.requests = 0

    def _reply(self, prompt: str, seed: int | None, sample: int = 0) -> str:
        for key, text in self.script.items():
            if key in prompt:
                return text[sample % len(text)] if isinstance(text, (list, tuple)) else text
        return f"fake {hashlib.sha256(f'{prompt}|{seed}'.encode()).hexdigest()[:8]}?"

    def generate(self, requests: Sequence, sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        prompts, sampling = templated(self.template, requests, sampling)
        self.calls.append((len(prompts), sampling))
        flat = []
        for position, (_, prompt, seed) in enumerate(expand_requests(prompts, sampling, seeds)):
            self.requests += 1
            if (self.fail_every and self.requests % self.fail_every == 0) or any(s in prompt for s in self.fail_on):
                flat.append(failed("http_503: fake failure"))
                continue
            if self.context_length is not None and len(prompt.split()) >= self.context_length:
                flat.append(failed(f"too_long: {len(prompt.split())} prompt tokens, context {self.context_length}"))
                continue
            text = self._reply(prompt, seed, position % sampling.n)
            for stop in sampling.stop:
                text = text.split(stop)[0] if stop else text
            words = text.split()
            truncated = len(words) > sampling.max_tokens
            text = " ".join(words[: sampling.max_tokens]) if truncated else text
            logprobs = None
            if sampling.logprobs:
                top = next((v for k, v in self.top_logprobs.items() if k in prompt), {d: 0.0 for d in "123456"})
                logprobs = [dict(list(top.items())[: sampling.logprobs]) for _ in words[: sampling.max_tokens] or [""]]
            flat.append(Completion(text=text, finish_reason="length" if truncated else self.finish_reason,
                                   n_tokens=len(words), logprobs=logprobs, prompt_tokens=len(prompt.split())))
        self.usage.add(flat)
        return regroup(prompts, sampling, flat)

    def count_tokens(self, texts: Sequence) -> list[int]:
        return [len(render(self.template, text).split()) for text in texts]

    def prompt_logprobs(self, prompts: Sequence[str]) -> list[list[float] | None]:
        self.calls.append((len(prompts), None))
        values = [next((v for k, v in self.prompt_logprob.items() if k in p), -1.0) for p in prompts]
        return [None if any(s in p for s in self.fail_on) else [value] * max(len(p.split()) - 1, 0)
                for p, value in zip(prompts, values)]
