"""Rewards for (instruction, response) pairs behind one interface, shared by Magpie curation and MCTS.

- `SequenceClassifierReward`: a transformers sequence-classification reward model (the GPU path, e.g.
  FsfairX-LLaMA3-RM or ArmoRM, whose `score` output is used when present), the chat rendered with the
  model's own template; batched.
- `JudgeReward`: any engine as a judge: the expected rating over the tokens "1".."9" from one batched
  `generate(max_tokens=1, logprobs=k)` call (as deita's scorer), mapped to [0, 1]. A rating whose digits
  are not all returned is None, never a default.

`reward_model(spec)` picks one: a path or HF name of a reward model, or None for the judge on the
stage's engine. Also the URIAL prompt for eliciting responses from a *base* model (Magpie's reward
difference r* - r_base).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Protocol, Sequence

import polars as pl

from pipeline.engines import Engine, Sampling, failure_reason
from pipeline.core.records import first_pairs
from pipeline.score.ratings import expected_rating

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
        prompts = [self.engine.template.prompt(JUDGE_PROMPT.format(instruction=q, response=r), opening=JUDGE_OPENING)
                   for q, r in pairs]
        replies = self.engine.generate(prompts, Sampling(temperature=0.0, max_tokens=1, logprobs=self.top_logprobs))
        ratings = [expected_rating(c[0].logprobs[0] if c[0].logprobs else None) for c in replies]
        return [None if r is None else (r - 1.0) / 8.0 for r in ratings], [failure_reason(c) for c in replies]


class SequenceClassifierReward:
    """A transformers reward model: score = the `score` output if the model has one, else logits[:, 0]."""

    def __init__(self, model: str, *, batch_size: int = 8, max_length: int = 4096, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype).to(self.device).eval()
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


# URIAL (Lin et al., arXiv 2312.01552): a base model answers in the assistant's style when shown a
# system block and a few constant examples. Same structure as the official prompts (instruction block,
# "# Query:" / "# Answer:" with fenced text, stop at the next "# Query"); our own example texts. Pass
# the official file with `urial_prompt=` to use it instead.
URIAL_PROMPT = '''# Instruction

Below are conversations between a person and an AI assistant. The person's queries follow "# Query:" and the
assistant's answers follow "# Answer:". The assistant is helpful, honest and careful; its answers are well
organised, detailed where it helps, and friendly.

# Query:
```
What are some good ways to save money on groceries?
```

# Answer:
```
Hi! Here are a few ways that work for most households:

1. Plan meals for the week and shop with a list, so you buy only what you will use.
2. Compare unit prices rather than package prices; store brands are often the best value.
3. Buy staples such as rice, beans and oats in bulk, and seasonal fruit and vegetables fresh.
4. Cook in batches and freeze portions to cut waste and takeaway spending.

Small changes add up quickly. Let me know if you would like a sample weekly plan!
```

# Query:
```
A train travels 180 km in 2 hours and then 120 km in 1.5 hours. What is its average speed?
```

# Answer:
```
Hello! Average speed is total distance divided by total time.

- Total distance: 180 km + 120 km = 300 km
- Total time: 2 h + 1.5 h = 3.5 h
- Average speed: 300 km / 3.5 h ≈ 85.7 km/h

So the train's average speed is about 85.7 km/h. Happy to help with more problems like this!
```

# Query:
```
How can I help a friend who seems stressed at work?
```

# Answer:
```
Hi! It's kind of you to want to help. A few things that usually make a difference:

1. Listen first: ask how they are doing and let them talk without rushing to fix things.
2. Offer concrete help, such as a walk, a meal together, or a hand with a task.
3. Encourage rest and activities they enjoy, and gently suggest professional support if the stress lasts.

Being there consistently matters more than having perfect advice. I hope this helps!
```
'''
URIAL_STOP = ("# Query", "# User")


def urial_prompt(instruction: str, prefix: str = URIAL_PROMPT) -> str:
    """The base-model prompt for one instruction (URIAL's backtick format), ending where the answer starts."""
    return f"{prefix}\n# Query:\n```\n{instruction}\n```\n\n# Answer:\n```\n"


def urial_answer(text: str | None) -> str | None:
    """A base model's URIAL continuation cut at the closing fence.

    >>> urial_answer("Hello! Paris.\\n```\\n\\n")
    'Hello! Paris.'
    """
    return None if text is None else text.split("```")[0].strip()


def reward_difference(df: pl.DataFrame, *, engine: Engine, base: Engine, reward_model_path: str | None = None,
                      max_tokens: int = 1024, urial_prompt_path: str | None = None) -> pl.DataFrame:
    """Stage: Magpie's r* - r_base: `base_reward` is the reward of the *base* model's URIAL-elicited answer to
    the same instruction (greedy, as the paper); `instruct_reward` is computed too if missing. `base` is the
    base model's engine (the runner loads it: the step's `engines={"base": ...}`)."""
    from pathlib import Path

    prefix = Path(urial_prompt_path).read_text() if urial_prompt_path else URIAL_PROMPT
    pairs = first_pairs(df)
    replies = base.generate([urial_prompt(q, prefix) for q, _ in pairs],
                            Sampling(temperature=0.0, max_tokens=max_tokens, stop=URIAL_STOP))
    answers = [urial_answer(c[0].text) for c in replies]
    judge = reward_model(engine, reward_model_path)
    base_scores, judge_failures = judge.score([(q, a or "") for (q, _), a in zip(pairs, answers)])
    base_scores = [s if a is not None else None for s, a in zip(base_scores, answers)]
    out = df if "instruct_reward" in df.columns else score_rewards(df, engine=engine, reward_model_path=reward_model_path)
    earlier = out["drop_reason"].to_list() if "drop_reason" in out.columns else [None] * out.height
    failures = [failure_reason(reply) or judged or before for reply, judged, before in zip(replies, judge_failures, earlier)]
    return out.with_columns(pl.Series("base_reward", base_scores, dtype=pl.Float64),
                            pl.Series("drop_reason", failures, dtype=pl.String))
