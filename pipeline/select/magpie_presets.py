"""Magpie curation: the paper's filter presets (Table 5, tau_1 = -12, tau_2 = 0) and the repository
notebook's variant, and Magpie preference pairs (Magpie-DPO).

Presets apply their filters in order (each row's drop counted under the first filter it fails), then
"longest k by response characters" last, as the paper does; Pro Filter6 takes k/2 of the longest among
"easy" rows (very easy or easy) and k/2 among harder ones. Reward thresholds are on the paper's reward
model scale (FsfairX-LLaMA3-RM); with another reward (the CPU judge's [0, 1]) pass your own thresholds.
"""
from __future__ import annotations

import polars as pl

import filters
from pipeline.engines import Engine, Sampling, chat, failure_reason
from pipeline.core.records import dump_meta, first_pairs, meta_dicts, seed_of
from pipeline.score.reward import reward_model

TAU_1, TAU_2 = -12.0, 0.0
MIN_DISTANCE = {"name": "min_neighbor_distance_above", "threshold": 0.0}
PRESETS: dict[str, dict] = {
    "air": {"filters": [{"name": "quality_at_least", "level": "good"}, {"name": "difficulty_at_least", "level": "medium"},
                        MIN_DISTANCE, {"name": "reward_difference_above", "threshold": TAU_2}], "longest": True},
    "pro": {"filters": [{"name": "quality_at_least", "level": "average"}, MIN_DISTANCE,
                        {"name": "reward_above", "threshold": TAU_1}], "longest": True},
    "pro2": {"filters": [{"name": "quality_at_least", "level": "good"}, {"name": "difficulty_at_least", "level": "easy"},
                         MIN_DISTANCE, {"name": "reward_above", "threshold": TAU_1}], "longest": True},
    "pro3": {"filters": [MIN_DISTANCE, {"name": "reward_above", "threshold": TAU_1}], "longest": True},
    "pro4": {"filters": [{"name": "quality_at_least", "level": "good"}, {"name": "difficulty_at_least", "level": "easy"},
                         MIN_DISTANCE, {"name": "reward_difference_above", "threshold": TAU_2}], "longest": True},
    "pro5": {"filters": [{"name": "quality_at_least", "level": "good"}, {"name": "difficulty_at_least", "level": "easy"},
                         MIN_DISTANCE, {"name": "reward_above", "threshold": TAU_1}], "longest": False},
    "pro6": {"filters": [MIN_DISTANCE, {"name": "reward_above", "threshold": TAU_1}], "longest": True, "half_easy": True},
    # data_sft/data_filter.ipynb: quality good/excellent, reward > -10, no trailing ':', first of repeats,
    # longest 300K, then shuffled with seed 42.
    "notebook": {"filters": [{"name": "quality_in", "levels": ["good", "excellent"]}, {"name": "reward_above", "threshold": -10.0},
                             "no_trailing_colon", "first_of_repeats"], "longest": True, "shuffle_seed": 42},
}
EASY = ("very easy", "easy")


def preset_filters(preset: str, *, reward_threshold: float | None = None,
                   reward_difference_threshold: float | None = None) -> list:
    """The filter spec of a preset, with the reward thresholds optionally replaced."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Magpie preset {preset!r}; valid: {list(PRESETS)}")
    spec = []
    for item in PRESETS[preset]["filters"]:
        item = dict(item) if isinstance(item, dict) else item
        if isinstance(item, dict) and item["name"] == "reward_above" and reward_threshold is not None:
            item["threshold"] = reward_threshold
        if isinstance(item, dict) and item["name"] == "reward_difference_above" and reward_difference_threshold is not None:
            item["threshold"] = reward_difference_threshold
        spec.append(item)
    return spec


def _response_chars(df: pl.DataFrame) -> pl.Expr:
    return pl.col("messages").list.eval(pl.element().filter(pl.element().struct.field("role") == "assistant")
                                        .struct.field("content").str.len_chars()).list.first().fill_null(0)


def magpie_filter(df: pl.DataFrame, *, preset: str = "pro", k: int = 300_000, reward_threshold: float | None = None,
                  reward_difference_threshold: float | None = None) -> pl.DataFrame:
    """Stage: mark rows a preset drops; kept rows come first, in the preset's final order.

    Longest-k ranks by the first response's characters, descending; ties keep row order.
    """
    config = PRESETS.get(preset) or {}
    marked = filters.mark(df, preset_filters(preset, reward_threshold=reward_threshold,
                                             reward_difference_threshold=reward_difference_threshold))
    marked = marked.with_row_index("_row").with_columns(_response_chars(marked).alias("_chars"))
    kept = marked.filter(pl.col("drop_reason").is_null())
    if config.get("longest"):
        if config.get("half_easy"):
            easy = pl.col("difficulty").is_in(list(EASY))
            chosen = pl.concat([kept.filter(easy).sort("_chars", descending=True, maintain_order=True).head(k // 2),
                                kept.filter(~easy).sort("_chars", descending=True, maintain_order=True).head(k - k // 2)])
        else:
            chosen = kept.sort("_chars", descending=True, maintain_order=True).head(k)
    else:
        chosen = kept
    if config.get("shuffle_seed") is not None:
        chosen = chosen.sample(fraction=1.0, shuffle=True, seed=config["shuffle_seed"])
    rest = marked.filter(~pl.col("_row").is_in(chosen["_row"].implode())).with_columns(
        pl.col("drop_reason").fill_null("not_longest_k"))
    return pl.concat([chosen, rest.sort("_row")]).drop("_row", "_chars")


def preference_pairs(df: pl.DataFrame, *, engine: Engine, k: int = 5, temperature: float = 0.8, top_p: float = 1.0,
                     max_tokens: int = 1024, reward_model_path: str | None = None) -> pl.DataFrame:
    """Stage: Magpie-DPO pairs: k responses per instruction (each request seeded), scored by the reward;
    chosen = best, rejected = worst (first occurrence on ties, as the official `list.index`).

    Rows with k = 1 or all-equal rewards get drop_reason "no_preference"; a failed response or reward request
    "engine_error:<kind>"; a reward that could not be parsed "reward_null".
    """
    pairs = first_pairs(df)
    prompts = [chat(q) for q, _ in pairs]
    sampling = Sampling(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    groups = engine.generate(prompts, sampling, [seed_of("dpo", rid) for rid in df["id"].to_list()])
    flat = [(q, c.text.strip()) for (q, _), group in zip(pairs, groups) for c in group if not c.failed]
    scores = iter(zip(*reward_model(engine, reward_model_path).score(flat)))
    metas, chosen, rejected, reasons = meta_dicts(df), [], [], []
    for (q, _), group, meta in zip(pairs, groups, metas):
        texts = [c.text.strip() for c in group if not c.failed]
        scored = [next(scores) for _ in texts]
        rewards = [value for value, _ in scored]
        failed = failure_reason(group) or next((error for _, error in scored if error), None)
        meta["dpo"] = {"candidates": texts, "rewards": rewards, "sampling": sampling.as_dict(), "engine": engine.spec.backend,
                       "model": engine.model_name, "reward": reward_model_path or "judge"}
        reason = None
        if failed is not None:
            reason = failed
        elif any(r is None for r in rewards):
            reason = "reward_null"
        elif len(rewards) < 2 or len(set(rewards)) == 1:
            reason = "no_preference"
        if reason:
            chosen.append(None)
            rejected.append(None)
        else:
            best, worst = rewards.index(max(rewards)), rewards.index(min(rewards))
            meta["dpo"] |= {"chosen_index": best, "rejected_index": worst}
            chosen.append([{"role": "user", "content": q}, {"role": "assistant", "content": texts[best]}])
            rejected.append([{"role": "user", "content": q}, {"role": "assistant", "content": texts[worst]}])
        reasons.append(reason)
    conversation = df.schema["messages"]
    return df.with_columns(pl.Series("chosen", chosen, dtype=conversation), pl.Series("rejected", rejected, dtype=conversation),
                           pl.Series("drop_reason", reasons, dtype=pl.String), dump_meta(metas))


def select_difficult(df: pl.DataFrame, *, min_difficulty: str = "medium") -> pl.DataFrame:
    """Stage: mark rows below `min_difficulty` (the paper extends selected difficult instructions to more turns)."""
    return filters.mark(df, [{"name": "difficulty_at_least", "level": min_difficulty}])

