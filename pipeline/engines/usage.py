"""What an engine has used: requests and tokens (from the API's usage, or counted by the local engine), and what they
cost at the provider's list prices.

Every backend adds its completions to its `usage` as they come back; the runner takes the difference around each
stage call and records it in the shards' manifest lines, which the card and the report sum per stage and model.
Prices are per million tokens, input and output, with the provider's batch price where there is one: the bundled
table (PRICES, as published on PRICES_DATE at PRICES_SOURCE) or a user's file (`--prices prices.yaml`, the same
shape, merged over it). Local engines (vllm, llamacpp) cost nothing per token; a hosted model without a price has a
cost of None (tokens are still counted), and a budget cannot be kept with it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

LOCAL_BACKENDS = ("vllm", "llamacpp", "fake")
PRICES_DATE = "2025-06-01"
PRICES_SOURCE = "https://openai.com/api/pricing, https://www.anthropic.com/pricing (list prices; check yours)"
# USD per million tokens: input, output; batch_input, batch_output (the providers' batch APIs: half price).
PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input": 0.15, "output": 0.60, "batch_input": 0.075, "batch_output": 0.30},
    "gpt-4o": {"input": 2.50, "output": 10.00, "batch_input": 1.25, "batch_output": 5.00},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40, "batch_input": 0.05, "batch_output": 0.20},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60, "batch_input": 0.20, "batch_output": 0.80},
    "gpt-4.1": {"input": 2.00, "output": 8.00, "batch_input": 1.00, "batch_output": 4.00},
    "o4-mini": {"input": 1.10, "output": 4.40, "batch_input": 0.55, "batch_output": 2.20},
    "claude-3-5-haiku": {"input": 0.80, "output": 4.00, "batch_input": 0.40, "batch_output": 2.00},
    "claude-3-7-sonnet": {"input": 3.00, "output": 15.00, "batch_input": 1.50, "batch_output": 7.50},
    "claude-sonnet-4": {"input": 3.00, "output": 15.00, "batch_input": 1.50, "batch_output": 7.50},
    "claude-opus-4": {"input": 15.00, "output": 75.00, "batch_input": 7.50, "batch_output": 37.50},
}


@dataclass
class Usage:
    """Requests and tokens, those sent through a provider batch counted apart (they have their own price)."""

    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0

    def add(self, completions: Iterable, *, batch: bool = False) -> None:
        """Count completions (pipeline.engines.Completion) as they come back from the engine."""
        for c in completions:
            self.requests += 1
            self.failed += c.failed
            if batch:
                self.batch_prompt_tokens += c.prompt_tokens
                self.batch_completion_tokens += c.n_tokens
            else:
                self.prompt_tokens += c.prompt_tokens
                self.completion_tokens += c.n_tokens

    def copy(self) -> "Usage":
        return Usage(**asdict(self))

    def since(self, before: "Usage") -> "Usage":
        return Usage(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)})

    def scaled(self, share: float) -> "Usage":
        """This usage times `share` (a shard's part of a window's), rounded."""
        return Usage(**{f.name: round(getattr(self, f.name) * share) for f in fields(self)})

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


def load_prices(path: Path | str | None) -> dict[str, dict[str, float]]:
    """The bundled prices, with a user's YAML file ({model: {input, output[, batch_input, batch_output]}}) over them."""
    prices = dict(PRICES)
    if path:
        import yaml

        given = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(given, dict) or not all(isinstance(v, dict) and {"input", "output"} <= set(v) for v in given.values()):
            raise ValueError(f"{path}: expected {{model: {{input: USD per 1M tokens, output: ..., batch_input: ..., "
                             "batch_output: ...}}}}")
        prices.update({str(k): {name: float(value) for name, value in v.items()} for k, v in given.items()})
    return prices


def price_of(model: str, prices: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The price entry for `model`: its own, else the longest entry its name starts with (a dated snapshot such as
    gpt-4o-mini-2024-07-18 is priced as gpt-4o-mini).

    >>> price_of("gpt-4o-mini-2024-07-18", PRICES)["input"], price_of("gpt-4o", PRICES)["input"], price_of("x", PRICES)
    (0.15, 2.5, None)
    """
    name = model.rsplit("/", 1)[-1]
    if name in prices:
        return prices[name]
    matches = [key for key in prices if name.startswith(key)]
    return prices[max(matches, key=len)] if matches else None


def cost(backend: str, model: str, usage: Usage, prices: dict[str, dict[str, float]]) -> float | None:
    """USD for `usage` of `model`: 0 on local engines, None for a hosted model without a price.

    >>> cost("anthropic", "claude-3-5-haiku-latest", Usage(prompt_tokens=10**6, batch_completion_tokens=10**6), PRICES)
    2.8
    """
    if backend in LOCAL_BACKENDS:
        return 0.0
    price = price_of(model, prices)
    if price is None:
        return None
    batch_in, batch_out = price.get("batch_input", price["input"]), price.get("batch_output", price["output"])
    total = (usage.prompt_tokens * price["input"] + usage.completion_tokens * price["output"]
             + usage.batch_prompt_tokens * batch_in + usage.batch_completion_tokens * batch_out) / 1e6
    return round(total, 6)
