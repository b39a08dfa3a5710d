import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.engines import EngineSpec, load_engine  # noqa: E402
from pipeline.engines.llamacpp_server import LlamaServer  # noqa: E402


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory):
    """A throwaway Prefect server and home for one test module (flows under test run against it)."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def step_calls(monkeypatch):
    """The names of the recipe steps whose task body ran (a cache hit runs none)."""
    from pipeline import recipes

    calls = []
    run_step = recipes.run_step

    def counting(out, step, source, **kwargs):
        calls.append(step.name)
        return run_step(out, step, source, **kwargs)

    monkeypatch.setattr(recipes, "run_step", counting)
    return calls


@pytest.fixture
def fake_spec():
    return EngineSpec.make("fake", "fake-model")


@pytest.fixture(scope="session")
def llamacpp():
    return load_engine(EngineSpec.make("llamacpp"))


@pytest.fixture
def llama_server():
    server = LlamaServer().start()
    yield server
    server.stop()


@pytest.fixture
def vllm_engine():
    # load_engine's cache makes this one engine per session, rebuilt if a step with another vLLM model closed it
    return load_engine(EngineSpec.make("vllm"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A one-layer random Llama with SmolLM2's tokenizer: TRL trainers take a step on it in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.engines.models import smollm2_hf_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
