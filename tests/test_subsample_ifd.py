import numpy as np
import polars as pl
import pytest

from pipeline.score import ifd
from pipeline.engines import EngineSpec, load_engine
from pipeline.select.isa import budget_for, fit_plateau, isa, isa_select, plateau


def test_isa_keeps_the_high_component_and_is_deterministic():
    rng = np.random.default_rng(0)
    features = np.vstack([rng.normal([0, 0], 0.5, size=(300, 2)), rng.normal([4, 0], 0.5, size=(100, 2))])
    picked = isa_select(features, 50, seed=3)
    assert len(picked) == 50 and (picked >= 300).all()
    assert np.array_equal(picked, isa_select(features, 50, seed=3))
    entropy = isa_select(features, 400, measure="posterior_entropy")
    assert sorted(entropy.tolist()) == list(range(400))


def test_isa_stage_marks_rows_outside_the_budget():
    rng = np.random.default_rng(1)
    df = pl.DataFrame({"id": [str(i) for i in range(40)], "deita_score": np.r_[rng.normal(2, 0.1, 30), rng.normal(9, 0.1, 10)]})
    out = isa(df, fraction=0.25)
    assert out["drop_reason"].null_count() == 10 and out.head(10)["deita_score"].min() > 5


def test_plateau_fit_recovers_known_parameters():
    sizes = np.array([50, 100, 200, 400, 800, 1600, 3200, 6400])
    fit = fit_plateau(sizes, plateau(sizes, 7.5, 3.0, 1 / 900))
    assert fit["p_max"] == pytest.approx(7.5) and fit["p_0"] == pytest.approx(3.0) and fit["k"] == pytest.approx(1 / 900)
    assert budget_for(fit, 0.9) == int(np.ceil(900 * np.log(10)))


def test_ifd_is_the_ratio_of_conditioned_to_unconditioned_answer_loss():
    engine = load_engine(EngineSpec.make("fake", "ifd-fake", options={"prompt_logprob": {"<|im_start|>user": -0.5}}))
    df = pl.DataFrame({"id": ["a", "b"], "source": ["t", "t"], "meta": ["{}", "{}"],
                       "messages": [[{"role": "user", "content": "q w"}, {"role": "assistant", "content": "x y z"}],
                                    [{"role": "user", "content": "q"}]]})
    out = ifd.score(df, engine=engine)
    assert out["ifd"].to_list() == [0.5, None]  # the second row has no answer
    assert engine.calls[-1][0] == 8  # one batched call: 4 prompts per row


@pytest.mark.real_llm
@pytest.mark.vllm
def test_ifd_on_the_real_model_matches_a_hand_computation(vllm_engine):
    """IFD = s(A|Q) / s(A) on SmolLM2 through vLLM's prompt logprobs, against the same ratio computed here from the
    model's logits with transformers: the answer's mean token loss after the chat-template question, over its loss
    after Cherry's "### Response:" header (the answer = the tokens the full text has beyond its prefix)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.engines.models import smollm2_hf_dir

    question, answer = "What is the capital of France?", "The capital of France is Paris."
    df = pl.DataFrame({"id": ["a"], "source": ["t"], "meta": ["{}"],
                       "messages": [[{"role": "user", "content": question}, {"role": "assistant", "content": answer}]]})
    got = ifd.score(df, engine=vllm_engine)["ifd"][0]

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir(), dtype=torch.float32).eval()

    def answer_loss(prefix: str) -> float:
        full = tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]
        n_answer = len(full) - len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0].double()
        logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(full[1:])[:, None])[:, 0]
        return float(-logprobs[-n_answer:].mean())

    expected = answer_loss(vllm_engine.template.prompt(question)) / answer_loss(ifd.RESPONSE_HEADER)
    assert 0.05 < expected < 1.0  # the question helps predict the answer
    assert got == pytest.approx(expected, rel=0.03)
