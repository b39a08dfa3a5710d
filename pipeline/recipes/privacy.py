"""The privacy and safety steps jobs over users' data put first: the `pii` pass (pipeline.select.pii) and the guard
model's `safety` check (pipeline.score.safety)."""
from __future__ import annotations

from pipeline.recipes.steps import Step
from pipeline.select.pii import TYPES as PII_TYPES

PII_STEP = "pii"  # the stage directory; the card and publish look for the function, not the name


def pii_step(*, drop: tuple[str, ...] | list[str] = (), shard_size: int = 4096) -> Step:
    """The `pii` step: redact every pattern type (pipeline.select.pii.TYPES) but those in `drop`, whose rows are
    dropped with `pii:<type>`. It runs before any model sees the rows, so no prompt carries what it removes."""
    unknown = sorted(set(drop) - set(PII_TYPES))
    if unknown:
        raise ValueError(f"unknown pii types {unknown}; valid: {list(PII_TYPES)}")
    return Step(PII_STEP, "pipeline.select.pii:scrub", {"drop": list(drop)}, uses_engine=False, shard_size=shard_size)


def pii_steps(pii: bool, drop: tuple[str, ...] | list[str] = ()) -> list[Step]:
    """[pii_step(drop=drop)], or [] when the job runs with --no-pii."""
    return [pii_step(drop=drop)] if pii else []


def safety_step(*, action: str = "drop", turns: str = "each", columns: tuple[str, ...] | list[str] = ("messages", "chosen"),
                categories: dict[str, str] | None = None, prompt: str = "auto", max_tokens: int = 16,
                shard_size: int = 32, engine: str | None = None) -> Step:
    """The `safety` step: a guard model (the job's engine, or `engine`, an EngineSpec JSON) checks each turn with
    Llama Guard 3's prompt and categories (or the user's `categories`); unsafe rows are dropped (`unsafe:<code>`) or,
    with action="tag", kept with the verdict in meta["safety"]."""
    return Step("safety", "pipeline.score.safety:check",
                {"action": action, "turns": turns, "columns": list(columns), "categories": categories, "prompt": prompt,
                 "max_tokens": max_tokens}, shard_size=shard_size, engine=engine)
