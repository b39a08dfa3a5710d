"""Device plumbing: one faiss build per environment, and the accelerator handed from one kind of model to the next."""
from types import SimpleNamespace

import pytest

from pipeline.core import devices


def test_faiss_cpu_beside_a_gpu_build_is_refused_with_the_fix(monkeypatch):
    dists = [SimpleNamespace(metadata={"Name": name}) for name in ("faiss-cpu", "faiss-gpu", "numpy")]
    monkeypatch.setattr("importlib.metadata.distributions", lambda: dists)
    devices.import_faiss.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"both \['faiss-cpu', 'faiss-gpu'\] are installed .* pip uninstall -y "
                                              r"faiss-cpu faiss-gpu && pip install faiss-gpu"):
            devices.import_faiss()
    finally:
        devices.import_faiss.cache_clear()


def test_a_torch_model_claiming_the_gpu_releases_every_vllm_engine_first():
    released = []
    devices.hold_accelerator("vllm", "generator", lambda: released.append("generator"))
    devices.hold_accelerator("vllm", "judge", lambda: released.append("judge"))
    devices.hold_accelerator("torch", "embedder", lambda: released.append("embedder"))
    devices.claim_accelerator("vllm")  # vLLM loads: the torch model goes, the engines stay
    assert released == ["embedder"]
    assert devices.release_accelerator("vllm", "judge") and not devices.release_accelerator("vllm", "judge")
    devices.claim_accelerator("torch")
    assert released == ["embedder", "generator"]
