"""Rewards for (instruction, response) pairs behind one interface, shared by Magpie curation and MCTS.

- `SequenceClassifierReward`: a transformers sequence-classification reward model (the GPU path, e.g.
  FsfairX-LLaMA3-RM or ArmoRM, whose `score` output is used when present), the chat rendered with the
  model's own template; batched.
- `JudgeReward`: any engine as a judge: the expected rating over the tokens "1".."9" from one batched
  `generate(max_tokens=1, logprobs=k)` call (as deita's scorer), mapped to [0, 1]. A rating whose digits
  are not all returned is None, never a default.

`reward_model(spec)` picks one: a path or HF name of a reward model, or None for the judge on the
stage's engine. Also Magpie's reward difference r* - r_base, whose base model answers through URIAL
(pipeline/engines/urial.py).
"""
from __future__ import annotations

import warnings

from functools import lru_cache
from typing import Protocol, Sequence

import polars as pl

from pipeline.core.rundir import StageWarning
from pipeline.engines import Engine, Sampling, chat, failure_reason, urial
from pipeline.core.devices import (claim_accelerator, free_accelerator_memory, hold_accelerator, release_accelerator,
                                   torch_device, torch_dtype)
from pipeline.core.records import first_pairs
from pipeline.score.ratings import RATED_DIGIT_NOTE, rating

JUDGE_PROMPT = ("Rate how well the assistant's response answers the user's request: helpful, correct, relevant and "
                "complete. 1 means useless or harmful, 9 means excellent.\n\n[User request]\n{instruction}\n\n"
                "[Assistant response]\n{response}\n\nAnswer with a single digit from 1 to 9.")
JUDGE_OPENING = "Rating: "


class RewardModel(Protocol):
    def score(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float | None], list[str | None]]:
        """(a reward per (instruction, response) pair, None where the answer could not be parsed; per pair the
        drop_reason `engine_error:<kind>` where its request failed, else None)."""


class JudgeReward:
    """Expected 1-9 rating by an engine, rescaled to [0, 1]."""

    def __init__(self, engine: Engine, top_logprobs: int = 20):
        self.engine, self.top_logprobs = engine, top_logprobs

    def score(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float | None], list[str | None]]:
        prompts = [chat(JUDGE_PROMPT.format(instruction=q, response=r), opening=JUDGE_OPENING) for q, r in pairs]
        prefills = getattr(self.engine, "prefills", True)
        reads_one = prefills and getattr(self.engine, "has_logprobs", True)  # else the rating is read from words
        replies = self.engine.generate(prompts, Sampling(temperature=0.0, max_tokens=1 if reads_one else 16,
                                                         logprobs=self.top_logprobs))
        rated = [rating(c[0], first_token=prefills) for c in replies]
        if any(by_digit for _, by_digit in rated):
            warnings.warn(RATED_DIGIT_NOTE, StageWarning, stacklevel=2)
        ratings = [value for value, _ in rated]
        return [None if r is None else (r - 1.0) / 8.0 for r in ratings], [failure_reason(c) for c in replies]


class SequenceClassifierReward:
    """A transformers reward model: score = the `score` output if the model has one, else logits[:, 0]."""

    def __init__(self, model: str, *, batch_size: int = 8, max_length: int = 4096, device: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = torch_device(device)
        if self.device != "cpu":  # a vLLM engine of the previous step gives the GPU back first
            claim_accelerator("torch")
            hold_accelerator("torch", "reward", release_models)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch_dtype(self.device))
        self.model = self.model.to(self.device).eval()
        self.batch_size, self.max_length = batch_size, max_length
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def score(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float | None], list[str | None]]:
        import torch

        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                                                    tokenize=False) for q, r in pairs]
        bos = self.tokenizer.bos_token
        # The template already writes BOS; tokenizing with special tokens would add a second one.
        texts = [t[len(bos):] if bos and t.startswith(bos) else t for t in texts]
        scores: list[float | None] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length).to(self.device)
                out = self.model(**batch)
                values = out.score if hasattr(out, "score") and out.score is not None else out.logits[:, 0]
                scores.extend(float(v) for v in values.float().flatten().tolist())
        return scores, [None] * len(scores)


@lru_cache(maxsize=2)
def _classifier(model: str) -> SequenceClassifierReward:
    return SequenceClassifierReward(model)


def release_models() -> None:
    """Drop the cached reward models and free their (GPU) memory, so the next model of a run can load."""
    _classifier.cache_clear()
    release_accelerator("torch", "reward")
    free_accelerator_memory()


def reward_model(engine: Engine | None, model: str | None = None) -> RewardModel:
    """The sequence-classification RM at `model` if given, else a judge on `engine`."""
    if model:
        return _classifier(model)
    if engine is None:
        raise ValueError("a reward needs either a reward model path (reward_model=...) or an engine to judge with")
    return JudgeReward(engine)


def score_rewards(df: pl.DataFrame, *, engine: Engine | None = None, reward_model_path: str | None = None) -> pl.DataFrame:
    """Stage: `instruct_reward` for each row's first turn (null where the answer could not be parsed; a failed
    request makes the row engine_error:<kind>)."""
    values, failures = reward_model(engine, reward_model_path).score(first_pairs(df)) if df.height else ([], [])
    return df.with_columns(pl.Series("instruct_reward", values, dtype=pl.Float64),
                           pl.Series("drop_reason", failures, dtype=pl.String))


def reward_difference(df: pl.DataFrame, *, engine: Engine, base: Engine, reward_model_path: str | None = None,
                      max_tokens: int = 1024, urial_prompt_path: str | None = None) -> pl.DataFrame:
    """Stage: Magpie's r* - r_base: `base_reward` is the reward of the *base* model's URIAL-elicited answer to
    the same instruction (greedy, as the paper); `instruct_reward` is computed too if missing. `base` is the
    base model's engine (the runner loads it: the step's `engines={"base": ...}`)."""
    from pathlib import Path

    prefix = Path(urial_prompt_path).read_text() if urial_prompt_path else urial.PREFIX
    pairs = first_pairs(df)
    replies = base.generate([urial.render([{"role": "user", "content": q}], prefix) for q, _ in pairs],
                            Sampling(temperature=0.0, max_tokens=max_tokens, stop=urial.STOP))
    answers = [urial.answer(c[0].text) for c in replies]
    judge = reward_model(engine, reward_model_path)
    base_scores, judge_failures = judge.score([(q, a or "") for (q, _), a in zip(pairs, answers)])
    base_scores = [s if a is not None else None for s, a in zip(base_scores, answers)]
    out = df if "instruct_reward" in df.columns else score_rewards(df, engine=engine, reward_model_path=reward_model_path)
    earlier = out["drop_reason"].to_list() if "drop_reason" in out.columns else [None] * out.height
    failures = [failure_reason(reply) or judged or before for reply, judged, before in zip(replies, judge_failures, earlier)]
    return out.with_columns(pl.Series("base_reward", base_scores, dtype=pl.Float64),
                            pl.Series("drop_reason", failures, dtype=pl.String))
