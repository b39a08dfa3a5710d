"""A corpus that grows: each run's selected rows, deduplicated against every row already there, appended.

Layout of a corpus directory::

    CORPUS/data/part-00000.parquet      the rows addition 0 added (record schema); never rewritten
    CORPUS/dropped/part-00000.parquet   rows of that run dropped as duplicates: drop_reason, dup_of (an id in the corpus)
    CORPUS/corpus.jsonl                 one line per addition: run, seed, rows offered / added, drops by reason, files,
                                        what its PII pass found per type (or "skipped")
    CORPUS/README.md                    the cumulative dataset card (history per addition, cumulative funnel)
    CORPUS/index/                       the dedup indexes (pipeline.select.corpus_index)
    CORPUS/publish.json                 the Hub commit of each pushed addition

`add` first redacts personal data from every turn (pipeline.select.pii; rows already scrubbed stay as they are), unless
`pii=False`, and `publish` refuses additions made that way unless `allow_unscrubbed`. It then compares each of a run's
rows with the corpus and with the run's earlier rows, in this order: same id,
exact (folded text), MinHash (Jaccard of word n-grams), semantic (embedding cosine); the first match drops the
row with `dup_<method>` and `dup_of`. The addition is committed by one index transaction after its Parquet files
are written, so a crash leaves the corpus as it was and the same `add` then completes it; adding a run whose
export is already in the corpus does nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.records import RecordError
from pipeline.core.rundir import read_records, write_atomic, write_json, write_shard
from pipeline.select.corpus_index import CorpusIndex, DedupSettings, exact_keys
from pipeline.select.neighbours import semantic_duplicates
from pipeline.select.selection import minhash_duplicates, minhash_signatures, normalized_text

METHODS = ("id", "exact", "minhash", "semantic")
TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "corpus_card.md.jinja"


class CorpusError(ValueError):
    """A corpus operation that cannot be done as asked; the message says how to fix it."""


def export_of(run: Path) -> Path:
    """The Parquet file of a run's selected rows: RUN/export/data.parquet, or `run` itself if it is a file."""
    run = Path(run)
    path = run / "export" / "data.parquet" if run.is_dir() else run
    if not path.exists():
        raise CorpusError(f"{path}: no such file; pass a finished run directory (with export/data.parquet) or a "
                          "Parquet file of records")
    return path


def add(run: Path, corpus: Path, *, settings: DedupSettings | dict | None = None, title: str = "aligndata corpus",
        pii: bool = True) -> dict:
    """Add the selected rows of `run` to `corpus` (created if new); returns the addition's manifest entry
    (with `"already": True` when this export was added before, and nothing changed). `settings`: the dedup settings
    asked for (CorpusIndex); an existing corpus uses its own for those not asked."""
    started = time.perf_counter()
    corpus, path = Path(corpus), export_of(run)
    content = hashlib.sha256(path.read_bytes()).hexdigest()
    with locked(corpus), contextlib.closing(CorpusIndex(corpus / "index", settings)) as index:
        _remove_uncommitted_parts(corpus, len(index.additions()))
        previous = index.addition_of(content)
        if previous is not None:
            _write_views(corpus, index, title)  # in case the last addition stopped between commit and views
            return previous | {"already": True}
        try:
            df = read_records(path)
        except RecordError as exc:
            raise CorpusError(str(exc)) from None
        scrubbed = _scrub(df) if pii else None
        df = scrubbed[0] if scrubbed else df
        number = len(index.additions())
        marked, keys, signatures, vectors = _deduplicate(df, index)
        mask = marked["drop_reason"].is_null().to_numpy()
        kept, dropped = marked.filter(mask).with_columns(pl.lit(None, dtype=pl.String).alias("dup_of")), marked.filter(~mask)
        name = f"part-{number:05d}.parquet"
        write_shard(kept, corpus / "data" / name)
        if dropped.height:
            write_shard(dropped, corpus / "dropped" / name)
        drops = dict(sorted(dropped.group_by("drop_reason").len().iter_rows())) if dropped.height else {}
        entry = {"run": str(Path(run).resolve()), "run_info": _run_info(run), "content": content,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows_in": df.height, "rows_added": kept.height,
                 "drops": drops, "corpus_rows": index.size() + kept.height,
                 "pii": {"found": scrubbed[1]} if scrubbed else "skipped",
                 "files": {"data": f"data/{name}", **({"dropped": f"dropped/{name}"} if dropped.height else {})},
                 "seconds": round(time.perf_counter() - started, 2)}
        entry = index.add(ids=kept["id"].to_list(), keys=[k for k, m in zip(keys, mask) if m],
                          signatures=signatures[mask], vectors=vectors[mask], content=content, entry=entry)
        _write_views(corpus, index, title)
        return entry


def _scrub(df: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """The rows with personal data redacted, and what this pass found per type."""
    from pipeline.select import pii

    out = pii.scrub(df)
    return out.drop("drop_reason"), pii.tally(df, out)


def unscrubbed(addition: dict) -> bool:
    """Whether an addition's rows went in without a PII pass (added with pii=False, or before add scrubbed)."""
    return not isinstance(addition.get("pii"), dict)


def _remove_uncommitted_parts(corpus: Path, committed: int) -> None:
    """Parquet files of an addition that stopped before its commit (numbered `committed` or more)."""
    for folder in ("data", "dropped"):
        for path in (corpus / folder).glob("part-*.parquet"):
            if int(path.stem.split("-")[1]) >= committed:
                path.unlink()


@contextlib.contextmanager
def locked(corpus: Path):
    """Hold the corpus's lock (CORPUS/.lock, an flock): one addition or push at a time, across processes."""
    corpus.mkdir(parents=True, exist_ok=True)
    with open(corpus / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _deduplicate(df: pl.DataFrame, index: CorpusIndex):
    """`df` with drop_reason and dup_of set on its duplicates, and its exact keys, MinHash signatures, embeddings."""
    from pipeline.score.embed import encode, texts

    s = index.settings
    folded = normalized_text(df, s.field).to_list()
    keys = exact_keys(folded)
    signatures = minhash_signatures(folded, num_perm=s.num_perm, ngram=s.ngram)
    vectors = encode(texts(df, s.field), model=s.embedder) if df.height else np.zeros((0, 1), np.float32)
    reason = np.full(df.height, None, dtype=object)
    dup_of = np.full(df.height, None, dtype=object)

    def mark(method: str, rows: np.ndarray, targets: list[str | None]) -> None:
        for row, target in zip(rows, targets):
            if target is not None and reason[row] is None:
                reason[row], dup_of[row] = f"dup_{method}", target

    # against the corpus
    all_rows = np.arange(df.height)
    mark("id", all_rows, index.ids_of(index.find_ids(df["id"].to_list())))
    mark("exact", all_rows, index.ids_of(index.find_exact(keys)))
    mark("minhash", all_rows, index.ids_of(index.find_minhash(signatures)))
    mark("semantic", all_rows, index.ids_of(index.find_semantic(vectors)[0]))
    # within the run, among the rows still kept: the first of a group stays
    ids = df["id"].to_list()
    for method in METHODS:
        rows = np.flatnonzero(reason == None)  # noqa: E711 (numpy object array)
        if len(rows) < 2:
            break
        if method == "id":
            first = _first_equal([ids[r] for r in rows])
        elif method == "exact":
            first = _first_equal([keys[r] for r in rows])
        elif method == "minhash":
            first = minhash_duplicates(signatures[rows], s.minhash_threshold)
        else:
            first = semantic_duplicates(vectors[rows], s.semantic_threshold)
        mark(method, rows[first >= 0], [ids[rows[f]] for f in first[first >= 0]])
    marked = df.with_columns(pl.Series("drop_reason", reason.tolist(), dtype=pl.String),
                             pl.Series("dup_of", dup_of.tolist(), dtype=pl.String))
    return marked, keys, signatures, vectors


def _first_equal(values: list) -> np.ndarray:
    """For each position, the first earlier position holding an equal value, else -1."""
    first, out = {}, np.full(len(values), -1, dtype=np.int64)
    for i, value in enumerate(values):
        if first.setdefault(value, i) != i:
            out[i] = first[value]
    return out


def _run_info(run: Path) -> dict:
    """What the run recorded about itself (DIR/run.json of a scheduled run: its name and seed), if anything."""
    path = Path(run) / "run.json"
    return json.loads(path.read_text()) if Path(run).is_dir() and path.exists() else {}


def _write_views(corpus: Path, index: CorpusIndex, title: str) -> None:
    """corpus.jsonl and README.md, rewritten from the index's additions log (the record of truth)."""
    additions = index.additions()
    write_atomic(corpus / "corpus.jsonl", lambda tmp: Path(tmp).write_text(manifest(additions)))
    write_atomic(corpus / "README.md", lambda tmp: Path(tmp).write_text(card(additions, index.settings, title)))


def manifest(additions: list[dict]) -> str:
    """corpus.jsonl's text: one JSON line per addition."""
    return "".join(json.dumps(a, sort_keys=True) + "\n" for a in additions)


def card(additions: list[dict], settings: DedupSettings, title: str) -> str:
    """The cumulative dataset card: Hub metadata, the additions' history and the cumulative funnel."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from pipeline.ship.card import size_category

    rows = additions[-1]["corpus_rows"] if additions else 0
    reasons = [f"dup_{m}" for m in METHODS]
    history = [{"number": a["number"], "run": a["run_info"].get("run") or Path(a["run"]).name,
                "seed": a["run_info"].get("seed", "-"), "time": a["time"], "rows_in": a["rows_in"],
                "added": a["rows_added"], "drops": [a["drops"].get(r, 0) for r in reasons], "total": a["corpus_rows"]}
               for a in additions]
    pii = [{"number": a["number"], "found": ", ".join(f"{k}: {v}" for k, v in a["pii"]["found"].items()) or "nothing"}
           if not unscrubbed(a) else {"number": a["number"], "found": None} for a in additions]
    funnel = {"rows_in": sum(a["rows_in"] for a in additions), "added": sum(a["rows_added"] for a in additions),
              "drops": [sum(a["drops"].get(r, 0) for a in additions) for r in reasons]}
    data = DatasetCardData(license="other", task_categories=["text-generation"], size_categories=[size_category(rows)],
                           pretty_name=title, tags=["synthetic", "alignment", "aligndata"],
                           configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}])
    return str(DatasetCard.from_template(data, template_path=str(TEMPLATE), pretty_name=title, rows=rows,
                                         history=history, funnel=funnel, reasons=reasons, settings=settings, pii=pii))


def rebalance(corpus: Path, k: int, *, tau: float = 0.9, score: str = "deita_score") -> Path:
    """Re-run deita's Repr Filter over the whole corpus to a global budget of `k` rows (by `score`, with the corpus's
    embedder over its dedup field) and write the selection as a new version, CORPUS/versions/vN/data.parquet
    (with version.json: k, tau, score, the additions it covers). The corpus itself is never changed."""
    from pipeline.score.embed import as_column, encode, texts
    from pipeline.select.selection import select_table

    corpus = Path(corpus)
    with locked(corpus), contextlib.closing(CorpusIndex(corpus / "index")) as index:
        additions, settings = index.additions(), index.settings
        parts = [corpus / a["files"]["data"] for a in additions]
        if not parts:
            raise CorpusError(f"{corpus} has no additions to rebalance; run `aligndata corpus add` first")
        rows = pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
        if score not in rows.columns or rows[score].null_count() == rows.height:
            raise CorpusError(f"no row of {corpus} has a {score!r}; rebalance selects by the score the runs' curation "
                              "computed (pass --score for another column)")
        table = rows.with_columns(as_column(encode(texts(rows, settings.field), model=settings.embedder)))
        selected = select_table(table, k=k, tau=tau, score=score, where=str(corpus))
        version = corpus / "versions" / f"v{len(list((corpus / 'versions').glob('v*')))}"
        write_shard(selected.drop("embedding"), version / "data.parquet")
        write_json({"k": k, "tau": tau, "score": score, "rows": selected.height, "embedder": settings.embedder,
                    "additions": [a["number"] for a in additions]}, version / "version.json")
        return version


def publish(corpus: Path, repo_id: str, *, token_env: str = "HF_TOKEN", private: bool = False,
            title: str = "aligndata corpus", allow_unscrubbed: bool = False) -> list[dict]:
    """Push each addition not pushed yet as one Hub commit (its data file, the card, corpus.jsonl); returns the
    new commits' records (also kept in CORPUS/publish.json). Files already on the Hub are never re-uploaded.
    Additions whose rows no PII pass went over are refused unless `allow_unscrubbed`."""
    from pipeline.ship.publish import commit_files

    corpus = Path(corpus)
    log_path = corpus / "publish.json"
    pushed = []
    with locked(corpus):  # the push log too: one addition or push at a time
        log = json.loads(log_path.read_text()) if log_path.exists() else {"repo_id": repo_id, "commits": []}
        if log["repo_id"] != repo_id:
            raise CorpusError(f"{corpus} is published to {log['repo_id']}; push there, or delete {log_path} to start "
                              f"{repo_id} from the first addition")
        with contextlib.closing(CorpusIndex(corpus / "index")) as index:
            additions, settings = index.additions(), index.settings
        done = {c["number"] for c in log["commits"]}
        raw = [a["number"] for a in additions if a["number"] not in done and unscrubbed(a)]
        if raw and not allow_unscrubbed:
            raise CorpusError(f"{corpus}: addition(s) {raw} went in without a PII pass (corpus add --no-pii); add those "
                              "runs to a corpus without --no-pii, or pass --allow-unscrubbed to publish them as they are")
        for position, addition in enumerate(additions):
            if addition["number"] in done:
                continue
            so_far = additions[:position + 1]  # the card and log as they were after this addition
            files = {addition["files"]["data"]: corpus / addition["files"]["data"],
                     "README.md": card(so_far, settings, title).encode(),
                     "corpus.jsonl": manifest(so_far).encode()}
            record = commit_files(repo_id, files, token_env=token_env, private=private,
                                  message=f"aligndata corpus: addition {addition['number']} "
                                          f"(+{addition['rows_added']} rows, from {Path(addition['run']).name})")
            log["commits"].append({"number": addition["number"], **record})
            write_json(log, log_path)
            pushed.append(record)
    return pushed
