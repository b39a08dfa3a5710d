"""Where torch work runs, and giving the accelerator's memory back between models.

torch is imported lazily: the CPU-only paths of the pipeline never need it.
"""
from __future__ import annotations

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
