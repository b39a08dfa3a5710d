"""The curate job: exact / MinHash dedup → embeddings → semantic dedup (→ decontamination) → deita scores →
selection (Repr Filter or ISA), over the user's data."""
from __future__ import annotations

from pathlib import Path

from pipeline.engines import EngineSpec
import filters
from pipeline.recipes.privacy import pii_steps
from pipeline.recipes.steps import Progress, Step, input_job

DEDUP_METHODS = ("exact", "minhash", "semantic")
SELECTORS = ("diverse", "isa")


def curate_steps(*, k: int = 1000, tau: float = 0.9, dedup: tuple[str, ...] = DEDUP_METHODS, selector: str = "diverse",
                 isa_fraction: float | None = None, score_mode: str = "auto", top_logprobs: int = 20,
                 embed_field: str = "instruction", embedder: str = "minilm", reference: str | None = None,
                 complexity_engine: dict | None = None, quality_filters: list | None = None, long_output: bool = False,
                 ifd_max: float | None = None, shard_size: int = 64, pii: bool = True,
                 pii_drop: tuple[str, ...] = ()) -> list[Step]:
    """The PII pass (redact; rows with a `pii_drop` type dropped; none with `pii=False`) → text-quality filters (filters.QUALITY unless `quality_filters` is given; [] for none; with `long_output` also
    filters.LONG_OUTPUT) → exact/MinHash dedup → embeddings → semantic dedup (→ decontamination against `reference`)
    (→ IFD, dropping IFD > `ifd_max`) → deita scores → selection (Repr Filter or ISA). `complexity_engine`
    (EngineSpec.make's keyword arguments) scores complexity with a second model, e.g. deita's complexity scorer next
    to its quality scorer as the engine."""

    unknown = set(dedup) - set(DEDUP_METHODS)
    if unknown or selector not in SELECTORS:
        raise ValueError(f"dedup methods must be in {list(DEDUP_METHODS)} and selector in {list(SELECTORS)}; "
                         f"got {sorted(unknown)} and {selector!r}")

    def dedup_step(method):
        return Step(f"dedup-{method}", "pipeline.select.selection:dedup", {"method": method},
                    uses_engine=False, shard_size=None)

    quality = (filters.QUALITY if quality_filters is None else quality_filters) + (filters.LONG_OUTPUT if long_output else [])
    steps = pii_steps(pii, pii_drop)
    steps += [Step("quality-filtered", "filters:mark", {"spec": quality}, uses_engine=False,
                   shard_size=4096)] if quality else []
    steps += [dedup_step(m) for m in ("exact", "minhash") if m in dedup]
    steps.append(Step("embedded", "pipeline.score.embed:embed", {"field": embed_field, "embedder": embedder}, uses_engine=False,
                      shard_size=4096))
    steps += [dedup_step("semantic")] if "semantic" in dedup else []
    if reference:
        steps.append(Step("decontaminated", "pipeline.select.selection:decontaminate",
                          {"reference": str(Path(reference).resolve()), "field": embed_field},
                          uses_engine=False, shard_size=None))
    if ifd_max is not None:  # Cherry LLM's IFD with the scoring engine; rows above ifd_max are misaligned pairs
        steps += [Step("ifd", "pipeline.score.ifd:score", {}, shard_size=shard_size, computes=("ifd",)),
                  Step("ifd-filtered", "filters:mark", {"spec": [{"name": "ifd_at_most", "limit": ifd_max}]},
                       uses_engine=False, shard_size=None)]
    scoring = {"mode": score_mode, "top_logprobs": top_logprobs}
    if complexity_engine:  # two models, two steps: the engine swap happens once, between them
        steps.append(Step("scored-complexity", "pipeline.score.deita:score", scoring | {"part": "complexity"},
                          shard_size=shard_size, engine=EngineSpec.make(**complexity_engine).to_json()))
        scoring |= {"part": "quality"}
    steps.append(Step("scored", "pipeline.score.deita:score", scoring, shard_size=shard_size, computes=("deita_score",)))
    if selector == "diverse":
        steps.append(Step("selected", "pipeline.select.selection:diverse_top_k", {"k": k, "tau": tau},
                          uses_engine=False, shard_size=None))
    else:
        steps.append(Step("selected", "pipeline.select.isa:isa",
                          {"budget": k} if isa_fraction is None else {"fraction": isa_fraction},
                          uses_engine=False, shard_size=None))
    return steps


def curate_job(out: Path, *, input_path: Path, engine: EngineSpec, fmt: str | None = None, strict: bool = False,
               salvage: bool = False, max_failure_rate: float = 0.1, on_progress: Progress | None = None,
               **step_options) -> dict:
    """Curate the user's data into `out`: import, curate_steps(**step_options), Parquet export (selection order)."""
    return input_job(out, input_path=input_path, steps=curate_steps(**step_options), engine=engine, fmt=fmt,
                     strict=strict, salvage=salvage, max_failure_rate=max_failure_rate, on_progress=on_progress)
