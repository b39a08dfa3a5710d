"""Where torch work runs, and giving memory back between models and stages.

torch is imported lazily: the CPU-only paths of the pipeline never need it.
"""
from __future__ import annotations

import ctypes
import gc
import sys


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
