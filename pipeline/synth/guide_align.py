"""Guide-Align (Luo et al., arXiv 2403.11838, "Ensuring Safe and High-Quality Outputs: A Guideline Library Approach
for Language Models"): a model writes input-specific guidelines, they are deduplicated into a library, and each
input is answered with the guidelines retrieved for it in the prompt.

Stages:
1. `write_guidelines`: the model reads an input, names the risks and quality pitfalls a response to it could fall
   into, and writes up to `per_input` short guidelines as `- ` bullets (our prompt). No bullet → a counted drop
   (`no_guidelines`).
2. `build_library` (pipeline/select/guide_library.py; whole input at once): every guideline embedded (MiniLM by default), kept in order unless its
   cosine to an earlier kept guideline is above `threshold` (the greedy rule of deita's Repr Filter, reused);
   each library row is a record whose `meta.guideline` is the text, `meta.sources` the inputs it came from (its
   duplicates' too) and `embedding` its vector. The library is the run's Parquet artefact (export/guidelines.parquet)
   that later runs pass back with `--library`.
3. `answer_with_guidelines`: the top-k library guidelines by cosine to the input (faiss, exact inner product; equal
   scores in library order) go in the system prompt, and the model answers. The training row keeps the input and the
   guided answer only (the paper fine-tunes on (input, response)); the guidelines stay in `meta.guide_align`.

Ours: the paper trains a retrieval model; we retrieve with the sentence embedder (the issue's and the paper's
baseline choice), recorded in the card.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import polars as pl

from pipeline.core.devices import import_faiss
from pipeline.core.records import dump_meta, first_instructions, meta_dicts
from pipeline.engines import Engine, Sampling, chat, failure_reason
from pipeline.score.embed import MINILM, encode, matrix

WRITE = ("Read the user input below. Think about what could go wrong in an assistant's response to it: harm to the "
         "user or others, false or outdated facts, missing caveats, privacy, bias, or simply an unhelpful, vague or "
         "badly structured answer. Then write at most {per_input} short, specific guidelines that a careful assistant "
         "should follow when responding to this input. Write each guideline on its own line, starting with \"- \", "
         "and nothing else.\n\n[User input]\n{input}")
GUIDED_SYSTEM = "Follow these guidelines in your response:\n{guidelines}"
THRESHOLD = 0.9  # MiniLM cosine above which two guidelines say the same thing
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.+?)\s*$")


def parse_guidelines(text: str | None, limit: int = 3) -> list[str]:
    """The first `limit` bulleted or numbered lines of a reply, stripped; [] when there is none.

    >>> parse_guidelines("Sure!\\n- Cite sources.\\n2) Warn about risks\\n- \\nplain line")
    ['Cite sources.', 'Warn about risks']
    """
    found = [m.group(1) for line in (text or "").splitlines() if (m := BULLET.match(line)) and len(m.group(1)) > 1]
    return found[:limit]


def write_guidelines(df: pl.DataFrame, *, engine: Engine, per_input: int = 3, max_tokens: int = 256) -> pl.DataFrame:
    """Stage: meta.guide_align.written, the guidelines the model wrote for each input (greedy decoding)."""
    metas = meta_dicts(df)
    prompts = [chat(WRITE.format(per_input=per_input, input=q)) for q in first_instructions(df)]
    replies = engine.generate(prompts, Sampling(temperature=0.0, max_tokens=max_tokens))
    reasons = []
    for meta, reply in zip(metas, replies):
        written = parse_guidelines(reply[0].text, per_input)
        meta["guide_align"] = {"written": written, "writer": engine.model_name}
        reasons.append(failure_reason(reply) or (None if written else "no_guidelines"))
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


@lru_cache(maxsize=2)
def load_library(path: str, sha: str | None = None) -> tuple[list[str], np.ndarray, str]:
    """(guidelines, their unit vectors, the embedder that made them) from a library Parquet file or stage dir; read
    once per (path, content hash), not once per shard."""
    from pipeline.core.inputs import InputError
    from pipeline.core.rundir import read_shards
    from pathlib import Path

    source, hint = Path(path), "make one with `aligndata guide-align`: its export/guidelines.parquet"
    try:
        library = read_shards(source) if source.is_dir() else pl.read_parquet(source)
        metas = meta_dicts(library)
        guidelines = [m["guideline"] for m in metas]
    except (pl.exceptions.PolarsError, OSError, KeyError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: not a guideline library ({first}); {hint}") from exc
    if not guidelines or "embedding" not in library.columns:
        raise InputError(f"{path}: not a guideline library (no guidelines with embeddings); {hint}")
    return guidelines, matrix(library), metas[0].get("embedder", MINILM)


def retrieve(queries: np.ndarray, library: np.ndarray, k: int) -> np.ndarray:
    """Indices of the top-k library rows per query by inner product (exact faiss search), best first; equal scores
    within the top k in library order (faiss leaves them in heap order)."""
    faiss = import_faiss()
    index = faiss.IndexFlatIP(library.shape[1])
    index.add(np.ascontiguousarray(library, dtype=np.float32))
    scores, labels = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(library)))
    order = np.lexsort((labels, -scores), axis=1)  # by score, then by library position
    return np.take_along_axis(labels, order, axis=1)


def answer_with_guidelines(df: pl.DataFrame, *, engine: Engine, library: str, library_sha: str | None = None, k: int = 3,
                           max_tokens: int = 1024, temperature: float = 0.0) -> pl.DataFrame:
    """Stage: each input answered with its top-k guidelines from `library` in the system prompt; rows become
    (input, guided answer). `library_sha` is the library's content hash: it only enters the stage's identity, so a
    changed library recomputes the answers."""
    guidelines, vectors, embedder = load_library(library, library_sha)
    questions, metas = first_instructions(df), meta_dicts(df)
    top = retrieve(encode(questions, model=embedder), vectors, k) if questions else np.zeros((0, k), np.int64)
    chosen = [[guidelines[j] for j in row if j >= 0] for row in top]
    prompts = [chat(q, system=GUIDED_SYSTEM.format(guidelines="\n".join(f"- {g}" for g in gs)))
               for q, gs in zip(questions, chosen)]
    replies = engine.generate(prompts, Sampling(temperature=temperature, max_tokens=max_tokens))
    messages, reasons = [], []
    for q, meta, gs, reply in zip(questions, metas, chosen, replies):
        text = (reply[0].text or "").strip()
        meta["guide_align"] = {**meta.get("guide_align", {}), "guidelines": gs, "library": library_sha, "k": k}
        messages.append([{"role": "user", "content": q}, {"role": "assistant", "content": text}])
        reasons.append(failure_reason(reply) or (None if text else "empty_response"))
    return df.with_columns(pl.Series("messages", messages, dtype=df.schema["messages"]), dump_meta(metas),
                           pl.Series("drop_reason", reasons, dtype=pl.String))
