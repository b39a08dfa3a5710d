"""A model's revision follows its weights: a fine-tune that changes only a late tensor changes it, the content
hashes behind it are read once per file version, and published checkpoints are named by their commit."""
import json
import os
import shutil
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from pipeline.engines import models
from pipeline.engines.models import SMOLLM2_SHA256, model_revision

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LONG_AGO = 1_600_000_000 * 10**9  # older than RACY_NS: the hashes of such files are remembered


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNDATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def reads(monkeypatch):
    """Paths whose content was hashed, in order."""
    seen, real = [], models._sha256
    monkeypatch.setattr(models, "_sha256", lambda path: seen.append(path) or real(path))
    return seen


def _tensors(last: float) -> dict:
    return {"layers.0.weight": torch.ones(1024, 1024), "layers.1.weight": torch.full((64, 64), 2.0),
            "lm_head.weight": torch.full((64, 64), last)}  # 4 MiB + 32 KiB of float32, the head stored last


def _age(*paths, ns: int = LONG_AGO) -> None:
    for path in paths:
        os.utime(path, ns=(ns, ns))


def _checkpoint(folder, last: float = 3.0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    save_file(_tensors(last), folder / "model.safetensors")
    _age(*folder.iterdir())
    return folder


def _last_tensor_offset(path) -> int:
    """Where the data of the tensor stored last begins in a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    start = max(v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return 8 + length + start


def test_a_fine_tune_of_the_last_tensor_changes_the_revision(tmp_path):
    weights = _checkpoint(tmp_path / "model") / "model.safetensors"
    before, old = model_revision("vllm", str(tmp_path / "model")), weights.read_bytes()
    assert _last_tensor_offset(weights) > 4 * 2**20 and len(old) > 3 * 2**20

    save_file(_tensors(last=3.5), weights)  # the fine-tune: same names, shapes and header, new head values
    _age(weights)
    new = weights.read_bytes()
    assert len(new) == len(old) and new[:_last_tensor_offset(weights)] == old[:_last_tensor_offset(weights)]
    assert model_revision("vllm", str(tmp_path / "model")) != before
    assert model_revision("llamacpp", str(weights)) != before  # a single-file checkpoint is hashed the same way


def test_an_in_place_rewrite_that_restores_the_mtime_still_changes_the_revision(tmp_path):
    weights = _checkpoint(tmp_path / "model") / "model.safetensors"
    before = model_revision("vllm", str(tmp_path / "model"))
    time.sleep(0.05)  # past the kernel's timestamp granularity, so the rewrite's ctime differs
    with open(weights, "r+b") as handle:  # `rsync --inplace -t`: same inode, size and mtime
        handle.seek(_last_tensor_offset(weights))
        handle.write(torch.full((64, 64), 9.0).numpy().tobytes())
    _age(weights)
    assert model_revision("vllm", str(tmp_path / "model")) != before


def test_hashes_are_read_once_per_file_version(tmp_path, reads, cache):
    folder = _checkpoint(tmp_path / "model")
    first = model_revision("vllm", str(folder))
    assert sorted(p.name for p in reads) == ["config.json", "model.safetensors", "tokenizer.json"]
    reads.clear()
    assert model_revision("vllm", str(folder)) == first and reads == []  # a stat per file, no read

    _age(folder / "model.safetensors", ns=LONG_AGO + 10**9)  # touched, not changed
    assert model_revision("vllm", str(folder)) == first
    assert [p.name for p in reads] == ["model.safetensors"]  # recomputed, same content, same revision

    entries = [p for p in (cache / "hashes").rglob("*") if p.is_file()]
    assert entries and all(p.read_text().split("  ")[1].strip().startswith(str(tmp_path)) for p in entries)
    for entry in entries:
        entry.write_text("not a digest")
    reads.clear()
    assert model_revision("vllm", str(folder)) == first and len(reads) == 3  # a corrupt entry is recomputed
    reads.clear()
    assert model_revision("vllm", str(folder)) == first and reads == []  # and written again


def test_a_file_written_just_now_is_hashed_but_not_remembered(tmp_path, reads):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF" + bytes(1000))  # a writer may still change it within the same timestamp tick
    first = model_revision("llamacpp", str(weights))
    assert model_revision("llamacpp", str(weights)) == first and len(reads) == 2


def test_the_revision_is_the_content_not_the_location_nor_the_documentation(tmp_path):
    folder = _checkpoint(tmp_path / "model")
    first = model_revision("vllm", str(folder))
    copy = shutil.copytree(folder, tmp_path / "elsewhere")
    assert model_revision("vllm", str(copy)) == first
    (copy / "README.md").write_text("# my model")
    (copy / "optimizer.pt").write_bytes(b"resume state")
    (copy / ".cache" / "huggingface").mkdir(parents=True)
    (copy / ".cache" / "huggingface" / "model.safetensors.lock").write_text("")
    assert model_revision("vllm", str(copy)) == first
    (copy / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Unigram"}}))
    assert model_revision("vllm", str(copy)) != first


def test_published_checkpoints_are_named_by_their_commit(tmp_path, reads, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    snapshot = _checkpoint(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    assert model_revision("vllm", str(snapshot)) == COMMIT
    assert model_revision("llamacpp", str(snapshot / "model.safetensors")) == COMMIT
    assert reads == []  # the commit already names the content

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert model_revision("vllm", "org/tiny") == COMMIT
    assert model_revision("vllm", "org/absent") is None


def test_the_default_model_and_remote_models():
    assert model_revision("vllm", "smollm2") == SMOLLM2_SHA256[:16]
    assert model_revision("llamacpp", "smollm2") == SMOLLM2_SHA256[:16]
    assert model_revision("openai", "gpt-x") is None  # a server's model name says nothing about its weights
