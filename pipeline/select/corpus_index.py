"""The dedup indexes a growing corpus keeps, so that adding a night's rows costs what the night's rows cost.

DIR/index/index.sqlite (SQLite, one transaction per addition, so an addition is in the index entirely or not
at all) holds every corpus row's sequence number and id, the exact keys (a 128-bit hash of the folded text,
primary key), the MinHash LSH band buckets (indexed by band and bucket) with each row's signature for the
verification of candidates, the list of semantic segments, the additions log and the corpus's dedup settings.
A lookup touches only the night's keys and the corpus rows that share them: O(night · log corpus).

Semantic dedup searches faiss segments in DIR/index/semantic-<first>.faiss, read memory-mapped: an exact flat
index for small segments, HNSW (M = 32, efSearch = 128) from HNSW_MIN rows on. Each addition writes one new
segment; segments are merged binary-counter style (while the newest is at least as large as the one before), so
there are O(log corpus) of them and each row is re-indexed O(log corpus) times over the corpus's life. HNSW's
recall is not guaranteed, but a near-duplicate at cosine >= 0.95 is almost always the nearest hit found.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.core.devices import import_faiss

HNSW_MIN = 50_000
MIX = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime: mixes a band's slots into one bucket number


@dataclass(frozen=True)
class DedupSettings:
    """How a corpus compares rows; fixed when the corpus is created (changing them would change what "already
    in the corpus" means for the rows already there)."""

    field: str = "instruction"  # what is compared: the first user turn, or the whole conversation
    embedder: str = "minilm"
    semantic_threshold: float = 0.95
    minhash_threshold: float = 0.7
    num_perm: int = 128
    ngram: int = 5


def exact_keys(folded: list[str]) -> list[bytes]:
    """128-bit keys of the folded texts."""
    return [hashlib.blake2b(text.encode(), digest_size=16).digest() for text in folded]


def band_buckets(signatures: np.ndarray, bands: int, width: int) -> np.ndarray:
    """(rows, bands) int64 bucket numbers: rows share a bucket in a band iff their signature slots agree there
    (up to 64-bit hash collisions, which the signature check removes)."""
    buckets = np.zeros((len(signatures), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(len(signatures), 0xCBF29CE484222325, dtype=np.uint64)
            for slot in range(band * width, (band + 1) * width):
                h = (h ^ signatures[:, slot].astype(np.uint64)) * MIX
            buckets[:, band] = h
    return buckets.view(np.int64)


SCHEMA = """
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, addition INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS exact(key BLOB PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bands(band INTEGER, bucket INTEGER, seq INTEGER, PRIMARY KEY(band, bucket, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signatures(seq INTEGER PRIMARY KEY, sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS segments(first INTEGER PRIMARY KEY, size INTEGER NOT NULL, file TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS additions(number INTEGER PRIMARY KEY, content TEXT NOT NULL UNIQUE, entry TEXT NOT NULL);
"""


class CorpusIndex:
    """The indexes of the corpus at `folder` (created with `settings`, or with the defaults; an existing corpus
    keeps its own and refuses different ones)."""

    def __init__(self, folder: Path, settings: DedupSettings | dict | None = None):
        """`settings`: the dedup settings asked for, all of them (a DedupSettings) or only those the user set (a dict
        of its fields). A new corpus takes them over the defaults; an existing one keeps its own and refuses any asked
        setting that differs."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / "index.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        given = asdict(settings) if isinstance(settings, DedupSettings) else dict(settings or {})
        stored = self.db.execute("SELECT value FROM settings WHERE key = 'dedup'").fetchone()
        if stored is None:
            self.settings = DedupSettings(**given)
            self.db.execute("INSERT INTO settings VALUES ('dedup', ?)", (json.dumps(asdict(self.settings)),))
        else:
            self.settings = DedupSettings(**json.loads(stored[0]))
            differ = [f"{key}={getattr(self.settings, key)!r} (not {value!r})" for key, value in given.items()
                      if getattr(self.settings, key) != value]
            if differ:
                raise ValueError(f"{self.folder.parent} deduplicates with {', '.join(differ)}, fixed when it was created "
                                 "(the rows already there were compared so): drop those options or use a new corpus")
        self._remove_orphan_segments()

    def close(self) -> None:
        self.db.close()

    # --- what is there ----------------------------------------------------------------------------------

    def size(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]

    def additions(self) -> list[dict]:
        return [json.loads(e) for (e,) in self.db.execute("SELECT entry FROM additions ORDER BY number")]

    def addition_of(self, content: str) -> dict | None:
        row = self.db.execute("SELECT entry FROM additions WHERE content = ?", (content,)).fetchone()
        return json.loads(row[0]) if row else None

    def ids_of(self, seqs: np.ndarray) -> list[str | None]:
        """The corpus ids of sequence numbers (None for -1)."""
        wanted = sorted({int(s) for s in seqs if s >= 0})
        found = dict(self._join("SELECT q.a, r.id FROM q JOIN rows r ON r.seq = q.a", list(enumerate(wanted))))
        return [found.get(int(s)) if s >= 0 else None for s in seqs]

    # --- lookups: each returns, per row, the corpus seq it duplicates, or -1 ------------------------------

    def find_ids(self, ids: list[str]) -> np.ndarray:
        return self._first("SELECT q.row, r.seq FROM q JOIN rows r ON r.id = q.a", list(enumerate(ids)), len(ids))

    def find_exact(self, keys: list[bytes]) -> np.ndarray:
        return self._first("SELECT q.row, e.seq FROM q JOIN exact e ON e.key = q.a", list(enumerate(keys)), len(keys))

    def find_minhash(self, signatures: np.ndarray) -> np.ndarray:
        """The earliest corpus row sharing an LSH bucket whose signature agrees on >= minhash_threshold slots."""
        from pipeline.select.selection import lsh_bands

        bands, width = lsh_bands(self.settings.minhash_threshold, self.settings.num_perm)
        buckets = band_buckets(signatures, bands, width)
        query = [(row, band, int(buckets[row, band])) for row in range(len(signatures)) for band in range(bands)]
        pairs = self._join("SELECT DISTINCT q.row, b.seq FROM q JOIN bands b ON b.band = q.a AND b.bucket = q.b", query)
        found = np.full(len(signatures), -1, dtype=np.int64)
        if not pairs:
            return found
        pairs.sort(key=lambda p: (p[0], p[1]))
        seqs = sorted({seq for _, seq in pairs})
        stored = dict(self._join("SELECT q.a, s.sig FROM q JOIN signatures s ON s.seq = q.a", list(enumerate(seqs))))
        for row, seq in pairs:
            if found[row] < 0:
                other = np.frombuffer(stored[seq], dtype=np.uint32)
                if (signatures[row].astype(np.uint32) == other).mean() >= self.settings.minhash_threshold:
                    found[row] = seq
        return found

    def find_semantic(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(corpus seq of the most similar row at cosine >= semantic_threshold or -1, that best cosine)."""
        best = np.full(len(vectors), -np.inf, dtype=np.float32)
        seqs = np.full(len(vectors), -1, dtype=np.int64)
        if len(vectors):
            for index in self._segments():
                similarity, labels = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
                better = (labels[:, 0] >= 0) & (similarity[:, 0] > best)
                best[better], seqs[better] = similarity[better, 0], labels[better, 0]
        return np.where(best >= self.settings.semantic_threshold, seqs, -1), best

    # --- adding -------------------------------------------------------------------------------------------

    def add(self, *, ids: list[str], keys: list[bytes], signatures: np.ndarray, vectors: np.ndarray, content: str,
            entry: dict) -> dict:
        """Index the rows `ids` (already deduplicated) and log the addition `entry` (its `number` is set here),
        in one transaction; returns the entry."""
        from pipeline.select.selection import lsh_bands

        first = self.db.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM rows").fetchone()[0]
        number = self.db.execute("SELECT COALESCE(MAX(number) + 1, 0) FROM additions").fetchone()[0]
        seqs = np.arange(first, first + len(ids), dtype=np.int64)
        bands, width = lsh_bands(self.settings.minhash_threshold, self.settings.num_perm)
        buckets = band_buckets(signatures, bands, width) if len(ids) else np.zeros((0, bands), np.int64)
        segments = self._plan_segments(vectors, seqs)  # files written before the commit, swapped in by it
        entry = {**entry, "number": number}
        self.db.execute("BEGIN")
        try:
            self.db.executemany("INSERT INTO rows VALUES (?, ?, ?)", zip(seqs.tolist(), ids, [number] * len(ids)))
            self.db.executemany("INSERT INTO exact VALUES (?, ?)", zip(keys, seqs.tolist()))
            self.db.executemany("INSERT INTO bands VALUES (?, ?, ?)",
                                ((band, int(buckets[i, band]), int(seqs[i])) for i in range(len(ids)) for band in range(bands)))
            self.db.executemany("INSERT INTO signatures VALUES (?, ?)",
                                zip(seqs.tolist(), (s.astype(np.uint32).tobytes() for s in signatures)))
            if segments is not None:
                self.db.execute("DELETE FROM segments")
                self.db.executemany("INSERT INTO segments VALUES (?, ?, ?)", segments)
            self.db.execute("INSERT INTO additions VALUES (?, ?, ?)", (number, content, json.dumps(entry, sort_keys=True)))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self._remove_orphan_segments()
        return entry

    def _segment_rows(self) -> list[tuple[int, int, str]]:
        return list(self.db.execute("SELECT first, size, file FROM segments ORDER BY first"))

    def _segments(self):
        faiss = import_faiss()
        for _, _, file in self._segment_rows():
            index = faiss.read_index(str(self.folder / file), faiss.IO_FLAG_MMAP_IFC)
            if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW):
                faiss.downcast_index(index.index).hnsw.efSearch = 128
            yield index

    def _plan_segments(self, vectors: np.ndarray, seqs: np.ndarray) -> list[tuple] | None:
        """Write the new segment (merged with the newest existing ones while they are no larger); returns the
        segment table to commit, or None when nothing is added."""
        if not len(seqs):
            return None
        current = self._segment_rows()
        merged_vectors, merged_seqs = [np.ascontiguousarray(vectors, dtype=np.float32)], [seqs]
        while current and current[-1][1] <= sum(len(s) for s in merged_seqs):
            _, _, file = current.pop()
            old_vectors, old_seqs = _contents(self.folder / file)
            merged_vectors.insert(0, old_vectors)
            merged_seqs.insert(0, old_seqs)
        data, labels = np.concatenate(merged_vectors), np.concatenate(merged_seqs)
        name = f"semantic-{int(labels[0]):012d}-{len(labels)}.faiss"
        _write_segment(data, labels, self.folder / name)
        return current + [(int(labels[0]), len(labels), name)]

    def _remove_orphan_segments(self) -> None:
        """Segment files the committed table does not list (merged away, or written by an addition that crashed)."""
        listed = {file for _, _, file in self._segment_rows()}
        for path in self.folder.glob("semantic-*.faiss"):
            if path.name not in listed:
                path.unlink(missing_ok=True)

    def _first(self, sql: str, query: list[tuple], n: int) -> np.ndarray:
        found = np.full(n, -1, dtype=np.int64)
        for row, seq in self._join(sql, query):
            if found[row] < 0 or seq < found[row]:
                found[row] = seq
        return found

    def _join(self, sql: str, rows: list[tuple]) -> list[tuple]:
        """Run `sql` against a temporary table q(row, a, b) holding `rows` (tuples of two or three values)."""
        self.db.execute("DROP TABLE IF EXISTS temp.q")
        self.db.execute("CREATE TEMP TABLE q(row INTEGER, a, b)")
        self.db.executemany("INSERT INTO q VALUES (?, ?, ?)", (tuple(r) + (None,) * (3 - len(r)) for r in rows))
        return self.db.execute(sql).fetchall()


def _write_segment(vectors: np.ndarray, labels: np.ndarray, path: Path) -> None:
    from pipeline.core.rundir import write_atomic

    faiss = import_faiss()
    dim = vectors.shape[1]
    inner = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT) if len(vectors) >= HNSW_MIN else faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, labels)
    write_atomic(path, lambda tmp: faiss.write_index(index, str(tmp)))


def _contents(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A segment's vectors and their corpus sequence numbers."""
    faiss = import_faiss()
    index = faiss.read_index(str(path))
    inner = faiss.downcast_index(index.index)
    storage = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
    return storage.reconstruct_n(0, storage.ntotal), faiss.vector_to_array(index.id_map).astype(np.int64)
