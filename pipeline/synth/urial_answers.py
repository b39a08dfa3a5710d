"""URIAL (Lin et al., arXiv 2312.01552) as a stage over the user's data: a *base* model answers each conversation
through the URIAL in-context prompt (pipeline/engines/urial.py: system block, three stylistic examples, `# Query:` /
`# Answer:` in backticks), greedily as the paper decodes; the answer is cut at the closing fence."""
from __future__ import annotations

import polars as pl

from pipeline.core.records import dump_meta, messages_of, meta_dicts, seed_of
from pipeline.engines import Engine, Sampling, failure_reason, urial


def up_to_last_user_turn(conversation: list[dict]) -> list[dict]:
    """The conversation cut after its last user turn (the answer to replace goes); [] if it has no user turn."""
    users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
    return conversation[:users[-1] + 1] if users else []


def answer(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 1024, temperature: float = 0.0) -> pl.DataFrame:
    """Stage: each row's conversation, cut after its last user turn, answered by the engine's model through URIAL
    (meta.urial records the model and decoding); an empty answer is dropped (`empty_response`)."""
    conversations = [up_to_last_user_turn(c) for c in messages_of(df)]
    metas, ids = meta_dicts(df), df["id"].to_list()
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, stop=urial.STOP)
    replies = engine.generate([urial.render(c) for c in conversations], sampling, [seed_of("urial", rid) % 2**31 for rid in ids])
    reasons = []
    for conversation, meta, reply in zip(conversations, metas, replies):
        text = urial.answer(reply[0].text) or ""
        conversation.append({"role": "assistant", "content": text})
        meta["urial"] = {"model": engine.model_name, "sampling": sampling.as_dict(), "turns": len(conversation) // 2}
        reasons.append(failure_reason(reply) or (None if text else "empty_response"))
    return df.with_columns(pl.Series("messages", conversations, dtype=df.schema["messages"]), dump_meta(metas),
                           pl.Series("drop_reason", reasons, dtype=pl.String))
