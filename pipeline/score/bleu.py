"""BLEUBERI (Chang et al., arXiv 2505.11080): BLEU of a policy model's output against one or more references, as a
difficulty score for selecting training prompts and as a GRPO reward.

BLEU is sacrebleu's sentence BLEU (13a tokenization, add-one smoothing, effective order), scaled to [0, 1]. We chose
sacrebleu over HF `evaluate` (which BLEUBERI's code uses) because evaluate's BLEU script is fetched from the Hub at
run time, and aligndata runs offline; both smooth with add-one, but sacrebleu leaves unigram counts unsmoothed and
takes the closest reference length for the brevity penalty (see the README's deviation table).
An empty output scores 0; more references can only raise the score.

References: a row's `meta.fields[<references column>]` (a string or a list of strings, kept from the input file),
else its first assistant answer (the gold response).
"""
from __future__ import annotations

import polars as pl

from pipeline.core.records import dump_meta, first_pairs, meta_dicts, seed_of
from pipeline.engines import ENGINE_ERROR, Engine, Sampling, chat


def bleu(hypothesis: str, references: list[str]) -> float:
    """Sentence BLEU in [0, 1].

    >>> bleu("the cat sat on the mat", ["the cat sat on the mat"]), bleu("", ["the cat"])
    (1.0, 0.0)
    """
    from sacrebleu.metrics import BLEU

    if not hypothesis.strip() or not references:
        return 0.0
    scorer = BLEU(smooth_method="add-k", smooth_value=1, effective_order=True)
    return min(1.0, scorer.sentence_score(hypothesis, list(references)).score / 100.0)


def references_of(row_meta: dict, answer: str | None, column: str | None) -> list[str]:
    """The row's references: meta.fields[column] (str or list), else its gold answer; [] when there are none."""
    value = row_meta.get("fields", {}).get(column) if column else answer
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [v for v in value if isinstance(v, str) and v.strip()] if isinstance(value, list) else []


def score(df: pl.DataFrame, *, engine: Engine, references_column: str | None = None, temperature: float = 0.0,
          max_tokens: int = 512) -> pl.DataFrame:
    """Stage: the engine (the policy) answers each row's first instruction; `bleu` is that answer's BLEU against the
    row's references (null, and counted, for a row without references; a failed request is engine_error)."""
    if df.is_empty():
        return df.with_columns(pl.lit(None, dtype=pl.Float64).alias("bleu"))
    pairs, metas = first_pairs(df), meta_dicts(df)
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens)
    seeds = [seed_of("bleuberi", rid) % 2**31 for rid in df["id"].to_list()]  # by row: any shard size
    completions = [c[0] for c in engine.generate([chat(q) for q, _ in pairs], sampling, seeds)]
    values, reasons = [], []
    for (_, answer), meta, completion in zip(pairs, metas, completions):
        refs = references_of(meta, answer, references_column)
        reasons.append(f"{ENGINE_ERROR}{completion.error_kind}" if completion.failed else None)
        values.append(bleu(completion.text or "", refs) if refs and not completion.failed else None)
        meta["bleuberi"] = {"output": completion.text, "references": len(refs), "sampling": sampling.as_dict()}
    return df.with_columns(pl.Series("bleu", values, dtype=pl.Float64), pl.Series("drop_reason", reasons, dtype=pl.String),
                           dump_meta(metas))


def reward_function(references_key: str = "references"):
    """BLEU as a TRL GRPOTrainer reward (`reward_funcs=[reward_function()]`): for each completion (text, or a list of
    chat messages whose last content is the text), its BLEU against the dataset column `references_key` (a string
    or a list of strings per row)."""
    def bleu_reward(completions, **columns) -> list[float]:
        references = columns[references_key]
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [bleu(text, [refs] if isinstance(refs, str) else list(refs)) for text, refs in zip(texts, references)]

    bleu_reward.__name__ = "bleu"
    return bleu_reward
