"""The CodecLM job: encode seeds to metadata → mix-and-match and decode → Self-Rubrics and Contrastive Filtering."""
from __future__ import annotations

from pipeline.engines import EngineSpec
from pipeline.recipes.steps import Step


def codeclm_steps(*, n_metadata: int = 200, per_metadata: int = 1, theta: float = 3.0, max_iterations: int = 4,
                  target: EngineSpec | None = None, keep_unresolved: bool = False, judge_mode: str = "text",
                  response_max_tokens: int = 512, seed: int = 0, shard_size: int = 32) -> list[Step]:
    """Encode seeds → mix-and-match + decode → Self-Rubrics and Contrastive Filtering."""

    return [
        Step("encoded", "pipeline.synth.codeclm:encode", {}, shard_size=shard_size),
        Step("decoded", "pipeline.synth.codeclm:decode",
             {"n_metadata": n_metadata, "per_metadata": per_metadata, "seed": seed}, shard_size=None),
        Step("filtered", "pipeline.synth.codeclm:contrastive",
             {"theta": theta, "max_iterations": max_iterations,
              "keep_unresolved": keep_unresolved, "judge_mode": judge_mode, "response_max_tokens": response_max_tokens,
              "seed": seed}, shard_size=shard_size, engines={"target": target.to_json()} if target else {}),
    ]
