"""Where torch work runs, and giving memory back between models and stages.

torch is imported lazily: the CPU-only paths of the pipeline never need it.
"""
from __future__ import annotations

import ctypes
import gc
import sys
from functools import lru_cache
from typing import Callable


def torch_device(requested: str | None = None) -> str:
    """`requested` if given, else "cuda" when a CUDA device is visible, else "cpu"."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(device: str):
    """bf16 on an accelerator (the published scorers and embedders are trained in it), fp32 on the CPU."""
    import torch

    return torch.float32 if device == "cpu" else torch.bfloat16


def free_accelerator_memory() -> None:
    """Collect dropped models and return the CUDA caching allocator's free blocks to the device (a process that never
    imported torch has none, and is not made to import it)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_host_memory() -> None:
    """Return freed host memory to the OS between stages: Arrow's pool keeps the buffers it freed and glibc keeps
    freed heap pages, so a stage over millions of rows would otherwise start from the previous one's high-water mark
    (measured: ~1 GB of 5 per million rows with embeddings). No gc.collect: frames are freed by reference counting,
    and a collection costs ~0.1 s with torch loaded, at every stage."""
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; other C libraries have no such call and return memory themselves
    except (OSError, AttributeError):
        pass


# Who holds accelerator memory now, by kind ("vllm", "torch"), each with the functions that give it back. A vLLM engine
# takes most of a GPU (gpu_memory_utilization 0.9), so a torch model loaded beside it runs out of memory, and vLLM's
# memory check fails when a torch model is resident: a kind claims the accelerator before it loads a model there.
_HOLDERS: dict[str, dict[str, Callable[[], None]]] = {}


def hold_accelerator(kind: str, name: str, release: Callable[[], None]) -> None:
    """Record that `kind` now holds accelerator memory (as `name`), given back by calling `release`."""
    _HOLDERS.setdefault(kind, {})[name] = release


def claim_accelerator(kind: str) -> None:
    """Before `kind` loads a model on the accelerator: every other kind gives its memory back (one kind at a time).

    >>> released = []
    >>> hold_accelerator("vllm", "generator", lambda: released.append("generator"))
    >>> claim_accelerator("vllm"), released      # the same kind keeps what it holds
    (None, [])
    >>> claim_accelerator("torch"), released     # a torch model: the vLLM engine goes first
    (None, ['generator'])
    >>> claim_accelerator("torch"), released     # and only once
    (None, ['generator'])
    """
    for other in [k for k in _HOLDERS if k != kind]:
        for release in _HOLDERS.pop(other).values():
            release()


def release_accelerator(kind: str, name: str) -> bool:
    """`kind` gives back what it held as `name` by itself (a model closed at a step boundary); False if it held none."""
    return _HOLDERS.get(kind, {}).pop(name, None) is not None


FAISS_HINT = ("pip install 'aligndata[cpu]' (faiss-cpu) on CPU hosts, or 'aligndata[gpu]' (faiss-gpu) on CUDA hosts; "
              "never both: they install the same `faiss` module over each other")


@lru_cache(maxsize=1)
def import_faiss():
    """The `faiss` module, or an ImportError naming the one package to install. faiss-cpu and a faiss-gpu build both
    install `faiss`, file over file, so with both present which one runs is undefined: that is refused."""
    from importlib import metadata

    installed = sorted({d.metadata["Name"].lower() for d in metadata.distributions()
                        if (d.metadata["Name"] or "").lower().startswith("faiss-")})
    cpu, gpu = [d for d in installed if d == "faiss-cpu"], [d for d in installed if d.startswith("faiss-gpu")]
    if cpu and gpu:
        raise ImportError(f"both {cpu + gpu} are installed and overwrite each other's `faiss` module: keep one "
                          f"(on a CUDA host: pip uninstall -y {' '.join(cpu + gpu)} && pip install faiss-gpu)")
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(f"faiss is missing: {FAISS_HINT}") from exc
    return faiss
