import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pipeline.engines import EngineSpec, load_engine  # noqa: E402
from pipeline.engines.llamacpp_server import LlamaServer  # noqa: E402


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
