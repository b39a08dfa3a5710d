"""Mixture-of-Instructions packing (Lu et al., arXiv 2404.18410): several instructions from different domains, each
under its domain's system prompt, packed into one multi-turn training sample, so that a model does not learn to
tie a skill to one system prompt.

A row's domain is its `task_category` (Magpie's tag) or `meta.category`; `system_prompts` maps domains to their
system prompts ("*" for any other domain). Rows are taken round-robin across domains (in sorted order, each
domain's rows in row order, at most `quotas[domain]` of them), so consecutive parts of a sample come from different
domains while any remain; a sample closes when the next part would pass `max_tokens`. A packed sample is
[system_a, user_a, assistant_a, system_b, user_b, assistant_b, ...] in the `messages` column, a conversation TRL and
the other trainer exports take as it is (no packing by the trainer needed). Lengths are counted with the
`tokenizer` given (an HF tokenizer name or path), else as characters / 4.
"""
from __future__ import annotations

from collections import deque

import polars as pl

from pipeline.core.inputs import InputError
from pipeline.core.records import dump_meta, messages_of, meta_dicts, record_id


def _length_fn(tokenizer: str | None):
    if tokenizer is None:
        return lambda text: -(-len(text) // 4)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(loaded.encode(text, add_special_tokens=False))


def domains_of(df: pl.DataFrame) -> list[str]:
    """Each row's domain: task_category, else meta.category, else "general"."""
    tagged = df["task_category"].to_list() if "task_category" in df.columns else [None] * df.height
    return [t or m.get("category") or "general" for t, m in zip(tagged, meta_dicts(df))]


def pack(df: pl.DataFrame, *, system_prompts: dict[str, str], max_tokens: int = 2048,
         quotas: dict[str, int] | None = None, tokenizer: str | None = None) -> pl.DataFrame:
    """Stage: the packed samples (see the module's docstring); rows whose one part alone is longer than
    `max_tokens` are dropped as `too_long`, rows past their domain's quota as `over_quota`."""
    measure = _length_fn(tokenizer)
    conversations, ids = messages_of(df), df["id"].to_list()
    domains = domains_of(df)
    queues: dict[str, deque] = {}
    dropped: dict[str, list] = {"too_long": [], "over_quota": []}
    for row, domain in enumerate(domains):
        if domain not in system_prompts and "*" not in system_prompts:
            raise InputError(f"row {row} (id={ids[row]!r}) is in domain {domain!r}, which has no system prompt; "
                             f"give one for it or a default under '*' (domains: {sorted(set(domains))})")
        queue = queues.setdefault(domain, deque())
        if quotas and domain in quotas and len(queue) >= quotas[domain]:
            dropped["over_quota"].append(row)
            continue
        queue.append(row)

    def part(row: int) -> list[dict]:
        system = system_prompts.get(domains[row], system_prompts.get("*"))
        return [{"role": "system", "content": system}] + [m for m in conversations[row] if m["role"] != "system"]

    samples: list[list[int]] = []
    current, used = [], 0
    order = sorted(queues)
    while any(queues.values()):
        for domain in order:
            if not queues[domain]:
                continue
            row = queues[domain][0]
            size = sum(measure(m["content"]) for m in part(row))
            if size > max_tokens:
                dropped["too_long"].append(queues[domain].popleft())
                continue
            if current and used + size > max_tokens:
                samples.append(current)
                current, used = [], 0
            current.append(queues[domain].popleft())
            used += size
    if current:
        samples.append(current)

    packed = pl.DataFrame({
        "id": [record_id("moi", *(ids[r] for r in rows)) for rows in samples],
        "source": ["moi"] * len(samples),
        "messages": [[m for r in rows for m in part(r)] for rows in samples],
    }, schema={"id": pl.String, "source": pl.String, "messages": df.schema["messages"]})
    packed = packed.with_columns(dump_meta([{"moi": {"parts": [ids[r] for r in rows], "domains": [domains[r] for r in rows]}}
                                            for rows in samples]))
    left = [(r, reason) for reason, rows in dropped.items() for r in rows]
    if not left:
        return packed
    rest = df[[r for r, _ in left]].with_columns(pl.Series("drop_reason", [reason for _, reason in left], dtype=pl.String))
    return pl.concat([packed, rest.select(packed.columns + ["drop_reason"])], how="diagonal_relaxed")
