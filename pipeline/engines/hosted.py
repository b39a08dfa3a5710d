"""What the hosted chat engines (openai_chat, anthropic) share: requests in flight under an adaptive concurrency limit
with optional request- and token-per-minute caps, and the mapping of SDK errors to failed Completions.

Retries, timeouts and `retry-after` are the SDKs' own (their `max_retries` and `timeout`); the limit watches every
HTTP response the SDK gets, retried ones included (an httpx event hook), so a 429 halves the requests in flight at
once and each run of successes as long as the limit adds one back, up to `max_concurrency` (AIMD, as TCP does).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from pipeline.engines import Completion, RawTextUnsupported, Sampling, expand_requests, failed, regroup  # noqa: F401
from pipeline.engines.openai import CONTEXT_TOO_LONG

RAW_TEXT = ("{backend} sends conversations, and this stage needs raw text prompts (Magpie's pre-query instructions, "
            "URIAL, prompt logprobs for IFD): use --engine vllm, llamacpp, or openai (a /v1/completions server)")


class AdaptiveLimit:
    """How many requests may be in flight: halved on a 429 (never below 1), one more after `limit` successes in a
    row (never above `maximum`); with `rpm`/`tpm`, requests also wait for their minute's budget."""

    def __init__(self, start: int, maximum: int, rpm: float | None = None, tpm: float | None = None):
        self.limit, self.maximum, self.rpm, self.tpm = max(1, start), max(1, maximum, start), rpm, tpm
        self.in_flight, self.successes, self.backoffs = 0, 0, 0
        self.window: list[tuple[float, int]] = []  # (time, tokens) of requests started in the last minute
        self.cond = threading.Condition()

    def _room(self, tokens: int) -> float:
        """0 when a request of `tokens` may start now, else how long to wait."""
        if self.in_flight >= self.limit:
            return 0.05
        now = time.monotonic()
        self.window = [(t, n) for t, n in self.window if now - t < 60]
        if self.rpm and len(self.window) >= self.rpm:
            return 60 - (now - self.window[0][0])
        if self.tpm and self.window and sum(n for _, n in self.window) + tokens > self.tpm:
            return 60 - (now - self.window[0][0])
        return 0.0

    def acquire(self, tokens: int = 0) -> None:
        with self.cond:
            while (wait := self._room(tokens)) > 0:
                self.cond.wait(timeout=wait)
            self.in_flight += 1
            self.window.append((time.monotonic(), tokens))

    def release(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def saw(self, status: int) -> None:
        """An HTTP response came back (every attempt, retries included)."""
        with self.cond:
            if status == 429:
                self.limit, self.successes = max(1, self.limit // 2), 0
                self.backoffs += 1
            elif status < 400:
                self.successes += 1
                if self.successes >= self.limit and self.limit < self.maximum:
                    self.limit, self.successes = self.limit + 1, 0
            self.cond.notify_all()


def fan_out(requests: Sequence, one: Callable[[object], Completion], limit: AdaptiveLimit,
            tokens: Callable[[object], int] = lambda r: 0) -> list[Completion]:
    """`one(request)` for every request, in order, at most `limit.limit` at a time."""
    def run(request):
        limit.acquire(tokens(request))
        try:
            return one(request)
        finally:
            limit.release()

    if not requests:
        return []
    with ThreadPoolExecutor(max_workers=min(limit.maximum, len(requests))) as pool:
        return list(pool.map(run, requests))


def sdk_failure(exc: Exception) -> Completion:
    """A failed request from an openai or anthropic SDK exception (the two SDKs name their errors alike)."""
    name, status, text = type(exc).__name__, getattr(exc, "status_code", None), str(exc)[:300]
    if name == "APITimeoutError":
        return failed(f"timeout: {text}")
    if name == "APIConnectionError":
        return failed(f"connection: {text}")
    if status == 400 and (CONTEXT_TOO_LONG.search(text) or "prompt is too long" in text.lower()):
        return failed(f"too_long: {text}")
    return failed(f"http_{status}: {text}" if status is not None else f"engine: {name}: {text}")


def answer(engine, requests: Sequence, sampling: Sampling, seeds: Sequence[int] | None, *, check: Callable,
           run_batch: Callable) -> list[list[Completion]]:
    """A chat engine's generate: every request checked before anything is sent (`check` raises on raw text), then
    sent one by one under the engine's limit, or as provider batches (`run_batch`), counted, and regrouped."""
    flat_requests = expand_requests(requests, sampling, seeds)
    for _, request, _ in flat_requests:
        check(request)
    flat = run_batch(engine, flat_requests, sampling) if engine.batch else \
        fan_out(flat_requests, lambda r: engine._one(r, sampling), engine.limit)
    engine.usage.add(flat, batch=engine.batch)
    return regroup(requests, sampling, flat)
