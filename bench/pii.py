"""PII detection on the labelled set (bench/pii_set.py), side by side: recall and precision per type for Presidio's
pattern recognizers, scrubadub and datafog, each used plainly, and for our `pii` stage at its defaults; then our
stage's throughput in rows/s over a larger frame.

    python bench/pii.py                 # the table (needs `pip install -e .[bench]` for scrubadub and datafog)
    python bench/pii.py --rows 100000   # and the stage's speed on 100k rows (the set repeated)

A planted value counts as found when a detection of its type overlaps it; a detection counts as correct when it
overlaps a planted value of its type. Detections on the decoys (versions, dates, prices, hashes, order numbers,
loopback addresses, numbers failing Luhn or the IBAN checksum) are the false positives. `-` marks a type a library
does not detect. `person` needs an NER model: none of the pattern detectors finds names.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pii_set import OUT as SET_PATH, PII_TYPES  # noqa: E402


def load() -> list[dict]:
    if not SET_PATH.exists():
        raise SystemExit(f"{SET_PATH} is missing: run `python bench/pii_set.py` first")
    return [json.loads(line) for line in SET_PATH.read_text().splitlines()]


def spans(text: str, value: str) -> list[tuple[int, int]]:
    out, start = [], text.find(value)
    while start >= 0:
        out.append((start, start + len(value)))
        start = text.find(value, start + 1)
    return out


def presidio_detector():
    import tldextract
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                          IpRecognizer, PhoneRecognizer)

    offline = tldextract.TLDExtract(suffix_list_urls=())  # the bundled suffix list: no download

    class OfflineEmail(EmailRecognizer):
        def validate_result(self, pattern_text):
            return offline(pattern_text).fqdn != ""

    kinds = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "IP_ADDRESS": "ip_address",
             "CREDIT_CARD": "credit_card", "IBAN_CODE": "iban"}
    recognizers = [OfflineEmail(), PhoneRecognizer(), IpRecognizer(), CreditCardRecognizer(), IbanRecognizer()]

    def detect(text):
        return [(kinds[r.entity_type], r.start, r.end) for rec in recognizers
                for r in rec.analyze(text, rec.supported_entities, None) if r.entity_type in kinds]
    return detect, set(kinds.values())


def scrubadub_detector():
    import scrubadub

    scrubber = scrubadub.Scrubber()
    kinds = {"email": "email", "phone": "phone", "credit_card": "credit_card", "credential": "credential"}

    def flat(filth):
        return [f for inner in getattr(filth, "filths", [filth]) for f in flat(inner)] if hasattr(filth, "filths") else [filth]

    def detect(text):
        return [(kinds[f.type], f.beg, f.end) for filth in scrubber.iter_filth(text) for f in flat(filth) if f.type in kinds]
    return detect, set(kinds.values())


def datafog_detector():
    import datafog

    kinds = {"EMAIL": "email", "PHONE": "phone", "IP_ADDRESS": "ip_address", "CREDIT_CARD": "credit_card"}

    def detect(text):
        return [(kinds[e.type], e.start, e.end) for e in datafog.scan(text).entities if e.type in kinds]
    return detect, set(kinds.values())


def ours_detector():
    from pipeline.select import pii

    def detect(text):
        return [(kind, start, end) for kind, start, end, _ in pii.find(text)]
    return detect, set(pii.TYPES)


def score(rows: list[dict], detect) -> tuple[dict, float]:
    """{type: [found, planted, correct, detected]} over every turn, and seconds."""
    counts = {t: [0, 0, 0, 0] for t in PII_TYPES}
    seconds = 0.0
    for row in rows:
        for index, turn in enumerate(row["conversations"]):
            text = turn["value"]
            planted = [(p["type"], s, e) for p in row["pii"] if p["turn"] == index for s, e in spans(text, p["value"])]
            planted = list(dict.fromkeys(planted))
            started = time.perf_counter()
            found = list(dict.fromkeys(detect(text)))
            seconds += time.perf_counter() - started
            for kind, s, e in planted:
                counts[kind][1] += 1
                counts[kind][0] += any(k == kind and a < e and s < b for k, a, b in found)
            for kind, a, b in found:
                counts.setdefault(kind, [0, 0, 0, 0])
                counts[kind][3] += 1
                counts[kind][2] += any(k == kind and a < e and s < b for k, s, e in planted)
    return counts, seconds


def table(rows: list[dict], names: list[str]) -> str:
    makers = {"presidio": presidio_detector, "scrubadub": scrubadub_detector, "datafog": datafog_detector, "ours": ours_detector}
    results = {}
    for name in names:
        try:
            detect, types = makers[name]()
        except ImportError as exc:
            print(f"{name}: not installed ({exc}); pip install -e '.[bench]'", file=sys.stderr)
            continue
        counts, seconds = score(rows, detect)
        results[name] = (counts, types, seconds)
    header = "| type | planted | " + " | ".join(f"{n} R / P" for n in results) + " |"
    lines = [header, "|---|---|" + "---|" * len(results)]
    for kind in PII_TYPES:
        planted = next(iter(results.values()))[0][kind][1] if results else 0
        cells = []
        for counts, types, _ in results.values():
            found, total, correct, detected = counts[kind]
            cells.append("-" if kind not in types else
                         f"{found / total if total else 0:.3f} / {correct / detected if detected else 1:.3f}")
        lines.append(f"| {kind} | {planted} | " + " | ".join(cells) + " |")
    turns = sum(len(r["conversations"]) for r in rows)
    lines.append(f"| turns/s | {turns} | " + " | ".join(f"{turns / s:,.0f}" for _, _, s in results.values()) + " |")
    return "\n".join(lines)


def stage_speed(rows: list[dict], n: int) -> str:
    """Our stage (redact, defaults) over `n` rows built by repeating the set: rows/s, one process."""
    import polars as pl

    from pipeline.core.records import conform
    from pipeline.select import pii

    roles = {"human": "user", "gpt": "assistant"}
    frame = pl.DataFrame({"id": [r["id"] for r in rows], "source": ["import"] * len(rows), "meta": ["{}"] * len(rows),
                          "messages": [[{"role": roles[t["from"]], "content": t["value"]} for t in r["conversations"]]
                                       for r in rows]})
    frame = pl.from_arrow(conform(frame, where="bench"))
    copies = -(-n // frame.height)
    big = pl.concat([frame.with_columns(pl.col("id") + f"-{i}") for i in range(copies)]).head(n)
    started = time.perf_counter()
    out = pii.scrub(big)
    seconds = time.perf_counter() - started
    found = sum(sum(json.loads(m).get("pii", {}).get("found", {}).values()) for m in out["meta"].to_list())
    return f"stage `pii` (redact) on {n:,} rows: {seconds:.1f} s, {n / seconds:,.0f} rows/s, {found:,} values redacted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--libraries", default="presidio,scrubadub,datafog,ours")
    parser.add_argument("--rows", type=int, default=20_000, help="rows for the stage's throughput (0: skip)")
    parser.add_argument("--held-out", action="store_true", help="score the held-out templates (bench/pii_set.HELD_OUT, "
                                                                  "seed 1) instead of the committed set")
    args = parser.parse_args()
    if args.held_out:
        from bench.pii_set import HELD_OUT, build

        rows = build(rows=160, seed=1, templates=HELD_OUT)
    else:
        rows = load()
    print(table(rows, args.libraries.split(",")))
    if args.rows:
        print(stage_speed(rows, args.rows))


if __name__ == "__main__":
    main()
