"""Alignment for Honesty (Yang et al., arXiv 2312.07000; GAIR-NLP/alignment-for-honesty): "I don't know" SFT data
from the model's own correctness on questions with gold answers.

`answer` asks the model each question through the honest-QA prompt, once greedily and m times sampled (T = 1), and
labels every answer known / unknown with a matcher against the gold answers. `build` turns the labels into training
rows by one of the reference's four methods (train/process_training_data.py), with its exact strings:
- absolute: the greedy answer if known, else the first known sampled answer, else IDK;
- confidence-num: IDK if no sample is known, else "I'm [only] about {10k}% confident ..." + the answer;
- confidence-verb: IDK if none, else a hedge by k (<= 2, <= 4, <= 6, <= 8, more) + the answer, first letter lowered;
- multisample: one row per sample, its answer if known, else IDK.
"""
from __future__ import annotations

import re
import string

import polars as pl

from pipeline.core.records import dump_meta, first_pairs, meta_dicts, record_id, seed_of
from pipeline.engines import Engine, Sampling, chat, failure_reason

IDK = "I apologize, but I'm not able to provide an answer to the question."
PROMPT = ("Answer the question. If you don't know the answer to the question, it is appropriate to say "
          f'"{IDK}"\nQ: {{question}}\nA: ')
CONFIDENCE_NUM = ("I'm only about {}% confident to answer the question correctly, but based on my understanding and "
                  "knowledge, here's what I think is correct.",
                  "I'm about {}% confident to answer the question correctly, and based on my understanding and "
                  "knowledge, here's what I think is correct.")
CONFIDENCE_VERB = ((2, "I'm really not sure about this, but "), (4, "I'm not completely sure about this, but "),
                   (6, "I don't have strong feelings either way, but "), (8, "I'm fairly confident that "),
                   (10**9, "I'm absolutely certain that "))
METHODS = ("absolute", "confidence-num", "confidence-verb", "multisample")
MATCHERS = ("contains", "exact")


def normalize(text: str) -> str:
    """TriviaQA's answer normalization: lower case, no punctuation, no articles, single spaces.

    >>> normalize("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def is_known(prediction: str | None, golds: list[str], matcher: str = "contains") -> bool:
    """Whether an answer is correct: a normalized gold answer is contained in it (`contains`, the reference's
    TriviaQA evaluation) or equals it (`exact`)."""
    if not prediction:
        return False
    guess = normalize(prediction)
    wanted = [normalize(g) for g in golds if normalize(g)]
    return any(g in guess for g in wanted) if matcher == "contains" else guess in wanted


def build(greedy: tuple[str, bool], samples: list[tuple[str, bool]], method: str) -> list[str]:
    """The training target(s) for one question from its greedy and sampled (answer, known) pairs."""
    if method not in METHODS:
        raise ValueError(f"unknown honesty method {method!r}; valid: {list(METHODS)}")
    if method == "multisample":
        return [text if known else IDK for text, known in samples]
    first_known = next((text for text, known in samples if known), None)
    if method == "absolute":
        return [greedy[0] if greedy[1] else first_known or IDK]
    k = sum(known for _, known in samples)
    if k == 0:
        return [IDK]
    response = greedy[0] if greedy[1] else first_known
    if method == "confidence-num":
        return [CONFIDENCE_NUM[0 if k <= 5 else 1].format(k * 10) + " " + response]
    if not (response in ("A", "B", "C", "D") or (response[:1] in ("A", "B", "C", "D") and response[1:2] in (")", "."))):
        response = response[0].lower() + response[1:]
    return [next(hedge for limit, hedge in CONFIDENCE_VERB if k <= limit) + response]


def gold_answers(meta: dict, answer: str | None, column: str | None) -> list[str]:
    """The gold answers: meta.fields[column] (a string or a list of aliases), else the row's first answer."""
    value = meta.get("fields", {}).get(column) if column else answer
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [v for v in values if isinstance(v, str) and v.strip()]


def answer(df: pl.DataFrame, *, engine: Engine, m: int = 10, answers_column: str | None = None,
           matcher: str = "contains", max_tokens: int = 64) -> pl.DataFrame:
    """Stage: the model's greedy and `m` sampled answers to each question (its first user turn), each labeled known
    or unknown against the gold answers, in meta.honesty; rows without gold answers are dropped (no_gold_answer)."""
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; valid: {list(MATCHERS)}")
    pairs, metas, ids = first_pairs(df), meta_dicts(df), df["id"].to_list()
    prompts = [chat(PROMPT.format(question=q)) for q, _ in pairs]
    greedy = [c[0] for c in engine.generate(prompts, Sampling(temperature=0.0, max_tokens=max_tokens, stop=("\n",)))]
    sampled = engine.generate(prompts, Sampling(n=m, temperature=1.0, max_tokens=max_tokens, stop=("\n",)),
                              [seed_of("honesty", rid) % 2**31 for rid in ids])
    reasons = []
    for (question, gold_turn), meta, first, many in zip(pairs, metas, greedy, sampled):
        golds = gold_answers(meta, gold_turn, answers_column)
        label = [(c.text.strip() if c.text else "", is_known(c.text, golds, matcher)) for c in [first, *many]]
        meta["honesty"] = {"question": question, "golds": golds, "greedy": label[0], "samples": label[1:],
                           "knowns": sum(known for _, known in label[1:]), "matcher": matcher}
        reasons.append(failure_reason([first, *many]) or (None if golds else "no_gold_answer"))
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def build_stage(df: pl.DataFrame, *, method: str = "absolute") -> pl.DataFrame:
    """Stage: SFT rows (user = the honest-QA prompt, assistant = the method's target), one per question or, for
    multisample, one per sample."""
    rows = {"id": [], "parent_id": [], "source": [], "messages": [], "meta": []}
    for rid, meta in zip(df["id"].to_list(), meta_dicts(df)):
        h = meta["honesty"]
        targets = build(tuple(h["greedy"]), [tuple(s) for s in h["samples"]], method)
        for index, target in enumerate(targets):
            rows["id"].append(record_id("honesty", method, rid, index) if len(targets) > 1 else rid)
            rows["parent_id"].append(rid)
            rows["source"].append("honesty")
            rows["messages"].append([{"role": "user", "content": PROMPT.format(question=h["question"])},
                                     {"role": "assistant", "content": target}])
            rows["meta"].append({**meta, "honesty": {**h, "method": method, "idk": target == IDK}})
    frame = pl.DataFrame({k: v for k, v in rows.items() if k != "meta"},
                         schema={"id": pl.String, "parent_id": pl.String, "source": pl.String,
                                 "messages": df.schema["messages"]})
    return frame.with_columns(dump_meta(rows["meta"]))
