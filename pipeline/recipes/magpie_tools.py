"""Magpie's tools over tagged or selected rows: the filter presets, preference pairs, and multi-turn extension of
difficult instructions (the steps of `aligndata magpie-filter`, `magpie-dpo` and `magpie-extend`)."""
from __future__ import annotations

from pipeline.recipes.magpie import magpie_steps
from pipeline.recipes.steps import Step


def magpie_filter_steps(*, preset: str = "pro", k: int = 300_000, reward_threshold: float | None = None,
                        reward_difference_threshold: float | None = None) -> list[Step]:
    """Magpie's filter preset over the whole input (pipeline.select.magpie_presets.magpie_filter)."""
    return [Step(f"filtered-{preset}", "pipeline.select.magpie_presets:magpie_filter",
                 {"preset": preset, "k": k, "reward_threshold": reward_threshold,
                  "reward_difference_threshold": reward_difference_threshold}, uses_engine=False, shard_size=None)]


def magpie_dpo_steps(*, k: int = 5, temperature: float = 0.8, max_tokens: int = 1024,
                     reward_model_path: str | None = None, shard_size: int = 32) -> list[Step]:
    """k responses per instruction, the best as chosen and the worst as rejected."""
    return [Step("pairs", "pipeline.select.magpie_presets:preference_pairs",
                 {"k": k, "temperature": temperature, "max_tokens": max_tokens, "reward_model_path": reward_model_path},
                 shard_size=shard_size)]


def magpie_extend_steps(*, turns: int = 2, min_difficulty: str = "medium", model: str | None = None,
                        shard_size: int = 32) -> list[Step]:
    """The difficult rows → follow-up and response per extra turn (the model picks the sampling profile) → the
    final filters."""
    steps = [Step("difficult", "pipeline.select.magpie_presets:select_difficult", {"min_difficulty": min_difficulty},
                  uses_engine=False, shard_size=None)]
    steps += [s for s in magpie_steps(turns=turns, model=model, shard_size=shard_size)
              if s.name.startswith(("followups", "responses-"))]
    return steps + [magpie_steps(model=model)[-1]]
