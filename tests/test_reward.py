"""The reward interface: a real transformers sequence-classification reward model (a tiny random one built here,
with SmolLM2's tokenizer and chat template), the engine judge, and the reward difference against a URIAL base."""

import polars as pl
import pytest

from pipeline.score import reward
from pipeline.engines import EngineSpec, load_engine


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from pipeline.engines.models import smollm2_hf_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_sequence_classifier_reward_is_batched_and_padding_independent(tiny_rm):
    model = reward.SequenceClassifierReward(tiny_rm, batch_size=3)
    pairs = [("How do I boil an egg?", "Boil it for nine minutes."), ("Hi", "Hello! How can I help you today?"),
             ("Name a prime.", "7")]
    together, failures = model.score(pairs)
    alone = [reward.SequenceClassifierReward(tiny_rm, batch_size=1).score([p])[0][0] for p in pairs]
    assert failures == [None] * 3
    assert all(isinstance(v, float) for v in together)
    assert together == pytest.approx(alone, abs=1e-4) and len(set(round(v, 6) for v in together)) == 3


def test_score_rewards_stage_uses_the_reward_model_when_given(tiny_rm):
    df = pl.DataFrame({"id": ["a"], "source": "t", "meta": "{}",
                       "messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]})
    out = reward.score_rewards(df, engine=None, reward_model_path=tiny_rm)
    assert out["instruct_reward"].null_count() == 0
    with pytest.raises(ValueError, match="either a reward model path"):
        reward.score_rewards(df, engine=None)


def test_reward_difference_uses_urial_answers_of_the_base_model():
    base = EngineSpec.make("fake", "base-model", options={"script": {"# Query:\n```\nWhat is 2+2?": "Hi! It is 4.\n```\n\n"}})
    one_hot = lambda digit: {d: (0.0 if d == digit else -1e4) for d in "123456789"}  # noqa: E731
    judge = load_engine(EngineSpec.make("fake", "urial-judge", options={"top_logprobs": {
        "[Assistant response]\nHi! It is 4.\n": one_hot("3"), "[Assistant response]\nFour.\n": one_hot("9")}}))
    df = pl.DataFrame({"id": ["a"], "source": "t", "meta": "{}",
                       "messages": [[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four."}]]})
    out = reward.reward_difference(df, engine=judge, base=load_engine(base))
    assert out["instruct_reward"].to_list() == [1.0] and out["base_reward"].to_list() == [0.25]  # (9-1)/8, (3-1)/8
    from pipeline.engines import urial

    prompt = urial.render([{"role": "user", "content": "What is 2+2?"}])
    assert prompt.startswith("# Instruction") and prompt.endswith("# Query:\n```\nWhat is 2+2?\n```\n\n# Answer:\n```\n")
