"""The tag job: Magpie's tags, language, rewards (and the reward difference against a base model) and the
min-neighbour distance, added to the rows of any input."""
from __future__ import annotations

from pipeline.engines import EngineSpec
from pipeline.recipes.steps import Step


def tag_steps(*, tags: tuple[str, ...] = ("quality", "difficulty", "category"), language: bool = True,
              reward: bool = True, neighbors: bool = True, reward_model_path: str | None = None,
              base: EngineSpec | None = None, embedder: str = "minilm", shard_size: int = 64) -> list[Step]:
    """Magpie's tags, language, reward (and reward difference with a base model), min-neighbour distance."""

    tag_columns = {"quality": ("input_quality",), "difficulty": ("difficulty",), "category": ("task_category",)}
    steps = [Step("tagged", "pipeline.score.tags:tag", {"tags": list(tags)}, shard_size=shard_size,
                  computes=tuple(c for t in tags for c in tag_columns.get(t, ())))]
    if language:
        steps.append(Step("language", "pipeline.score.tags:language", {}, uses_engine=False, shard_size=4096))
    if reward and base is None:
        steps.append(Step("rewarded", "pipeline.score.reward:score_rewards", {"reward_model_path": reward_model_path},
                          shard_size=shard_size, computes=("instruct_reward",)))
    elif reward:
        steps.append(Step("rewarded", "pipeline.score.reward:reward_difference", {"reward_model_path": reward_model_path},
                          shard_size=shard_size,
                          computes=("instruct_reward", "base_reward"), engines={"base": base.to_json()}))
    if neighbors:
        steps += [Step("embedded", "pipeline.score.embed:embed", {"embedder": embedder}, uses_engine=False, shard_size=4096),
                  Step("neighbors", "pipeline.select.selection:neighbors", {}, uses_engine=False, shard_size=None)]
    return steps
