"""A growing corpus: each addition deduplicated (id, exact, MinHash, semantic on the real MiniLM) against the corpus
and within itself, appended, logged, carded; crash-safe and idempotent; pushed one Hub commit per addition."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from huggingface_hub import DatasetCard

from fakehub import FakeHub
from pipeline.core.rundir import write_shard
from pipeline.select.corpus_index import HNSW_MIN, CorpusIndex, DedupSettings
from pipeline.ship import corpus

LONG = ("Please write a detailed travel itinerary for a seven day trip through northern Italy that starts in Milan, "
        "visits Lake Como, Verona, Venice and Bologna, and ends in Florence, with train connections, one museum per "
        "city, a local dish to try in each place, and a rough budget per day for a couple travelling in {month}")


def records(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame({"id": [i for i, _ in rows], "source": ["test"] * len(rows),
                         "messages": [[{"role": "user", "content": t}, {"role": "assistant", "content": "An answer."}]
                                      for _, t in rows], "meta": ["{}"] * len(rows)})


def export(tmp_path, name: str, rows) -> "os.PathLike":
    run = tmp_path / name
    write_shard(records(rows), run / "export" / "data.parquet")
    return run


def test_an_addition_drops_what_the_corpus_or_the_run_already_has(tmp_path):
    night1 = export(tmp_path, "night1", [("a1", "Write a short poem about the sea at night."),
                                         ("a2", LONG.format(month="May")),
                                         ("a3", "List three prime numbers larger than one hundred.")])
    night2 = export(tmp_path, "night2", [
        ("b1", "  WRITE a short poem   about the sea at night."),          # exact (folded) copy of a1
        ("b2", LONG.format(month="June")),                                 # one word changed: MinHash
        ("b3", "Write a short poem about the ocean at night."),            # paraphrase: semantic, cosine 0.956
        ("a3", "A new text under an id the corpus already has."),          # same id
        ("b5", "Explain how photosynthesis turns light into sugar."),      # new
        ("b6", "explain how photosynthesis turns light into sugar."),      # copy of b5 within the run
        ("b7", "Name the planets of the solar system in order from the sun.")])  # new
    out = tmp_path / "corpus"
    first = corpus.add(night1, out)
    assert (first["rows_in"], first["rows_added"], first["corpus_rows"], first["drops"]) == (3, 3, 3, {})
    second = corpus.add(night2, out)
    assert second["rows_added"] == 2 and second["corpus_rows"] == 5
    assert second["drops"] == {"dup_exact": 2, "dup_id": 1, "dup_minhash": 1, "dup_semantic": 1}
    dropped = pl.read_parquet(out / "dropped" / "part-00001.parquet")
    assert dict(zip(dropped["id"], zip(dropped["drop_reason"], dropped["dup_of"]))) == {
        "b1": ("dup_exact", "a1"), "b2": ("dup_minhash", "a2"), "b3": ("dup_semantic", "a1"), "a3": ("dup_id", "a3"),
        "b6": ("dup_exact", "b5")}
    data = pl.read_parquet(out / "data")
    assert data["id"].to_list() == ["a1", "a2", "a3", "b5", "b7"] and data["drop_reason"].null_count() == data.height
    assert pl.read_parquet(out / "data" / "part-00000.parquet")["id"].to_list() == ["a1", "a2", "a3"]

    log = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert [(e["number"], e["rows_added"], e["files"]["data"]) for e in log] == [(0, 3, "data/part-00000.parquet"),
                                                                                   (1, 2, "data/part-00001.parquet")]
    card = (out / "README.md").read_text()
    assert "| 1 | night2 | - |" in card and "| 10 | 5 | 1 | 2 | 1 | 1 |" in card  # history row; cumulative funnel
    assert DatasetCard(card).data.to_dict()["configs"][0]["data_files"][0]["path"] == "data/*.parquet"


def test_adding_the_same_run_again_changes_nothing_and_a_crash_mid_addition_is_redone(tmp_path, monkeypatch):
    night1 = export(tmp_path, "night1", [("a1", "Tell me a joke about cats."), ("a2", "Summarise the water cycle.")])
    night2 = export(tmp_path, "night2", [("b1", "Describe how a rainbow forms in the sky.")])
    out = tmp_path / "corpus"
    corpus.add(night1, out)
    files = sorted(p.name for p in (out / "data").iterdir())
    assert corpus.add(night1, out)["already"] is True
    assert sorted(p.name for p in (out / "data").iterdir()) == files

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed between the Parquet files and the index commit

    monkeypatch.setattr(CorpusIndex, "add", crash)
    with pytest.raises(KeyboardInterrupt):
        corpus.add(night2, out)
    monkeypatch.undo()
    index = CorpusIndex(out / "index")
    assert index.size() == 2 and len(index.additions()) == 1  # the index is as it was
    index.close()
    corpus.add(night1, out)  # any later add (here a no-op) first removes the uncommitted addition's file
    assert sorted(p.name for p in (out / "data").iterdir()) == files
    entry = corpus.add(night2, out)
    assert (entry["number"], entry["rows_added"], entry["corpus_rows"]) == (1, 1, 3)
    assert len((out / "corpus.jsonl").read_text().splitlines()) == 2


def test_rebalance_selects_a_global_budget_as_a_new_version_and_leaves_the_corpus_alone(tmp_path):
    out = tmp_path / "corpus"
    texts = ["Plan a picnic for six people.", "Explain how vaccines train the immune system.",
             "Write a limerick about a cat.", "Give three tips for learning a language."]
    for night, (first, second) in enumerate([(0, 1), (2, 3)]):
        scores = {0: 1.0, 1: 4.0, 2: 3.0, 3: 2.0}
        rows = records([(f"r{i}", texts[i]) for i in (first, second)]).with_columns(
            pl.Series("deita_score", [scores[first], scores[second]]))
        run = tmp_path / f"night{night}"
        write_shard(rows, run / "export" / "data.parquet")
        corpus.add(run, out)
    before = {p: p.read_bytes() for p in (out / "data").iterdir()}
    version = corpus.rebalance(out, 3)
    assert pl.read_parquet(version / "data.parquet")["id"].to_list() == ["r1", "r2", "r3"]  # by score, across nights
    assert json.loads((version / "version.json").read_text())["additions"] == [0, 1]
    assert corpus.rebalance(out, 1).name == "v1" and {p: p.read_bytes() for p in (out / "data").iterdir()} == before
    with pytest.raises(corpus.CorpusError, match="no row of .* has a 'ifd'"):
        corpus.rebalance(out, 1, score="ifd")


def test_a_corpus_keeps_its_dedup_settings_and_later_adds_take_them(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    night = export(tmp_path, "night", [("a1", "Plan a picnic for six people.")])
    corpus.add(night, tmp_path / "corpus", settings=DedupSettings(semantic_threshold=0.9))
    with pytest.raises(ValueError, match=r"deduplicates with semantic_threshold=0.9 \(not 0.95\), fixed when it was created"):
        corpus.add(night, tmp_path / "corpus", settings=DedupSettings())
    later = export(tmp_path, "later", [("b1", "Write a limerick about a cat.")])
    result = CliRunner().invoke(app, ["corpus", "add", str(later), "--corpus", str(tmp_path / "corpus")])
    assert result.exit_code == 0 and result.exception is None, result.output  # no options: the corpus's own settings
    result = CliRunner().invoke(app, ["corpus", "add", str(later), "--corpus", str(tmp_path / "corpus"),
                                      "--minhash-threshold", "0.5"])
    assert result.exit_code == 2 and "minhash_threshold=0.7 (not 0.5)" in " ".join(result.output.split())


def test_semantic_segments_merge_and_every_row_stays_findable(tmp_path):
    rng = np.random.default_rng(0)
    index = CorpusIndex(tmp_path / "index")
    added = []
    for night, size in enumerate([40, 40, 40, 40, 10, HNSW_MIN]):
        vectors = rng.standard_normal((size, 32)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"n{night}-{i}" for i in range(size)]
        signatures = rng.integers(0, 2**32, (size, 128), dtype=np.uint64)
        index.add(ids=ids, keys=[i.encode() for i in ids], signatures=signatures, vectors=vectors,
                  content=str(night), entry={})
        added.append(vectors)
    sizes = [size for _, size, _ in index._segment_rows()]
    assert sizes == [HNSW_MIN + 170]  # 40+40 → 80; +40+40 → 160; +10 → (160, 10); +50000 merges everything (HNSW)
    everything = np.concatenate(added)
    probe = np.r_[0:200:7, 200:everything.shape[0]:997]
    seqs, similarity = index.find_semantic(everything[probe])
    assert (seqs == probe).mean() >= 0.99 and similarity.min() > 0.99
    assert len(list((tmp_path / "index").glob("semantic-*.faiss"))) == 1  # merged-away files are gone
    index.close()


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    return subprocess.run([str(Path(sys.executable).with_name("aligndata")), *args], env=clean | (env or {}),
                          capture_output=True, text=True, timeout=300)


def test_the_corpus_commands_add_and_push_one_commit_per_addition(tmp_path):
    out = tmp_path / "corpus"
    for night, text in enumerate(["Tell me a fact about owls.", "Give me a recipe for lentil soup."], start=1):
        added = cli("corpus", "add", str(export(tmp_path, f"night{night}", [(f"n{night}", text)])), "--corpus", str(out))
        assert added.returncode == 0 and f"addition {night - 1}: 1 rows → 1 added" in added.stderr, added.stderr
    again = cli("corpus", "add", str(tmp_path / "night2"), "--corpus", str(out))
    assert "already in" in again.stderr and again.returncode == 0
    missing = cli("corpus", "add", str(tmp_path / "nowhere"), "--corpus", str(out))
    assert missing.returncode == 2 and "nowhere: no such file; pass a finished run" in missing.stderr
    assert "Traceback" not in missing.stderr

    token = "hf_CORPUStokenForTheLoopbackHub012"
    with FakeHub(tmp_path / "hub", tokens={token}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "CORPUS_TOKEN": token}
        push = ("corpus", "publish", "--corpus", str(out), "--repo", "tester/corpus", "--token-env", "CORPUS_TOKEN")
        first = cli(*push, env=env)
        assert first.returncode == 0, first.stderr
        assert cli(*push, env=env).stderr.startswith("tester/corpus already has every addition")
        cli("corpus", "add", str(export(tmp_path, "night3", [("n3", "What does a barometer measure?")])), "--corpus", str(out))
        assert cli(*push, env=env).returncode == 0
        state = hub.repos["datasets/tester/corpus"]
        commits = state["commits"]
        assert [c["summary"] for c in commits] == [f"aligndata corpus: addition {i} (+1 rows, from night{i + 1})" for i in range(3)]
        assert sorted(p for p in state["files"] if p.startswith("data/")) == [f"data/part-0000{i}.parquet" for i in range(3)]
        assert state["files"]["README.md"] == (out / "README.md").read_bytes()
        assert state["files"]["data/part-00002.parquet"] == (out / "data" / "part-00002.parquet").read_bytes()
        uploads = [path for method, path in hub.requests if method == "PUT" and path.startswith("/lfs-upload/")]
        assert len(uploads) == 3  # each Parquet file was sent once
    for text in (first.stdout, first.stderr, (out / "publish.json").read_text()):
        assert token not in text
