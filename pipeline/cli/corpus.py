"""`aligndata corpus add` and `aligndata corpus publish`: grow one deduplicated dataset over many runs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import ALLOW_UNSCRUBBED, choice, console, fail
from pipeline.score.embed import FIELDS

Field = choice(FIELDS)

corpus_app = typer.Typer(no_args_is_help=True, help="Grow one deduplicated corpus over many runs and push its additions.")
CORPUS = typer.Option(..., "--corpus", help="The corpus directory (created by the first add).")
TITLE = typer.Option("aligndata corpus", help="The corpus card's title.")


@corpus_app.command("add")
def add_command(
    run: Path = typer.Argument(..., help="A finished run directory (its export/data.parquet) or a Parquet file of records."),
    corpus_dir: Path = CORPUS,
    field: Optional[Field] = typer.Option(None, help="What is compared: instruction (first user turn; the default) or "
                                                    "conversation. Fixed by the first add, like the thresholds."),
    semantic_threshold: Optional[float] = typer.Option(None, help="Embedding cosine at or above which a row is a "
                                                                  "duplicate (default 0.95; an existing corpus: its own)."),
    minhash_threshold: Optional[float] = typer.Option(None, help="Estimated Jaccard of word 5-grams at or above which a row "
                                                                 "is a duplicate (default 0.7; an existing corpus: its own)."),
    rebalance: Optional[int] = typer.Option(None, help="Then re-select K rows over the whole corpus with deita's Repr "
                                                       "Filter (by deita_score), written as CORPUS/versions/vN."),
    tau: float = typer.Option(0.9, help="The Repr Filter's tau for --rebalance."),
    title: str = TITLE,
    no_pii: bool = typer.Option(False, "--no-pii", help="Add the rows as they are (default: personal data is redacted "
                                                        "from every turn first); `corpus publish` then refuses this "
                                                        "addition unless --allow-unscrubbed."),
) -> None:
    """Append the run's selected rows, with personal data redacted, that are not duplicates (same id, exact,
    MinHash, semantic) of a corpus row or of an earlier row of the run; the dropped rows go to CORPUS/dropped/ with
    their dup_of. Adding the same run again does nothing."""
    from pipeline.ship import corpus

    asked = {"field": field, "semantic_threshold": semantic_threshold, "minhash_threshold": minhash_threshold}
    settings = {key: value for key, value in asked.items() if value is not None}  # the corpus keeps the rest
    try:
        entry = corpus.add(run, corpus_dir, settings=settings, title=title, pii=not no_pii)
    except (corpus.CorpusError, ValueError, FileNotFoundError) as exc:
        raise fail(exc) from exc
    if entry.get("already"):
        console.print(f"{run} is already in {corpus_dir} (addition {entry['number']}); nothing to add", soft_wrap=True)
    else:
        drops = ", ".join(f"{k}: {v}" for k, v in entry["drops"].items()) or "-"
        found = entry["pii"]["found"] if isinstance(entry.get("pii"), dict) else None
        pii = "not scrubbed" if found is None else ", ".join(f"{k}: {v}" for k, v in found.items()) or "none found"
        console.print(f"addition {entry['number']}: {entry['rows_in']} rows → {entry['rows_added']} added, drops: {drops}; "
                      f"PII redacted: {pii}; {entry['corpus_rows']} rows in {corpus_dir} ({entry['seconds']} s)",
                      soft_wrap=True)
    if rebalance is not None:
        try:
            version = corpus.rebalance(corpus_dir, rebalance, tau=tau)
        except (corpus.CorpusError, ValueError) as exc:
            raise fail(exc) from exc
        console.print(f"rebalanced to {rebalance} rows: {version / 'data.parquet'}", soft_wrap=True)


@corpus_app.command("publish")
def publish_command(
    corpus_dir: Path = CORPUS,
    repo_id: str = typer.Option(..., "--repo", help="Dataset repository, e.g. my-org/nightly-magpie."),
    token_env: str = typer.Option("HF_TOKEN", help="Environment variable holding the write token."),
    private: bool = typer.Option(False, help="Create the repository private."),
    title: str = TITLE,
    allow_unscrubbed: bool = ALLOW_UNSCRUBBED,
) -> None:
    """Push each addition not pushed yet, one Hub commit each (its Parquet file, the card and corpus.jsonl as they
    were after it); files already pushed are never sent again. Additions made with --no-pii are refused unless
    --allow-unscrubbed."""
    from pipeline.ship import corpus
    from pipeline.ship.publish import PublishError

    try:
        pushed = corpus.publish(corpus_dir, repo_id, token_env=token_env, private=private, title=title,
                                allow_unscrubbed=allow_unscrubbed)
    except (corpus.CorpusError, PublishError) as exc:
        raise fail(exc) from exc
    for record in pushed:
        console.print(f"{record['message']} → {record['endpoint']} {repo_id} @ {record['commit'][:12]}", soft_wrap=True)
    if not pushed:
        console.print(f"{repo_id} already has every addition of {corpus_dir}", soft_wrap=True)
