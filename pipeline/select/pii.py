"""Personal data out of every turn: find e-mail addresses, phone numbers, IP addresses, payment cards, IBANs and
credentials (API keys, tokens, private keys) in messages/chosen/rejected (content, reasoning and tool-call
arguments), and redact them with typed placeholders or drop the row (`pii:<type>`), per type.

Placeholders are numbered per conversation in reading order (messages, then chosen, then rejected; turn by turn):
the same value gets the same placeholder everywhere in the row (`<EMAIL_1>` in the question and in the answer that
quotes it, in chosen and in rejected), a second address `<EMAIL_2>`. Values are compared normalized: e-mail
addresses case-folded, phone numbers as E.164, cards and IBANs by their characters without separators, IP addresses
in their canonical form. Rows dropped for a type are redacted too, so no value is written to any file. Each row's
`meta["pii"]["found"]` counts what was found per type (summed over passes); the values are never kept.

Library choice, by measurement on our labelled set (bench/pii.py; the table is in the README): Presidio's pattern
recognizers had the best recall of the libraries (0.81 on cards, 0.98-1.0 elsewhere) but phone precision 0.44 and IP
precision 0.74 (order numbers, IP addresses and coordinates read as phones; loopback addresses and netmasks as IPs),
no Mastercard 2-series, no national phone formats outside its region list, 2 ms a turn, and a download of the
public suffix list (tldextract) on its first e-mail; scrubadub and datafog found fewer (cards 0.28 and 0.67, no
IBANs, no keys) at lower precision. So candidates are found by our patterns and each is validated by the maintained
library that owns its rules: libphonenumber's metadata (`phonenumbers`) for phone numbers, `python-stdnum` for the
Luhn check and IBAN country formats and mod-97 checksums, the standard `ipaddress` for addresses, tldextract's
bundled public suffix list (no download) for e-mail domains, and pipeline.core.secrets's token patterns (the ones
our own logs are scrubbed with) for credentials: recall and precision 1.0 on every pattern type there (the set our
rules were written against; on held-out templates, 1.0 but card precision 0.95), 6,300 turns/s.
Texts that cannot hold any of them are skipped by one Polars regex over the column.

What runs without an NER model: every type above. Names and street addresses need one (they have no shape a
pattern can check); no vetted NER model ships offline as a Python package, so they are not detected, and the card
says so.
"""
from __future__ import annotations

import ipaddress
import re
from functools import cache

import polars as pl

from pipeline.core.records import dump_meta, meta_dicts
from pipeline.core.secrets import TOKEN

# Pattern types in the order a span claimed by two is given to the first (a key holds digits that look like a phone).
TYPES = ("credential", "email", "iban", "credit_card", "ip_address", "phone")
PLACEHOLDER = {"credential": "CREDENTIAL", "email": "EMAIL", "iban": "IBAN", "credit_card": "CREDIT_CARD",
               "ip_address": "IP_ADDRESS", "phone": "PHONE"}
ACTIONS = ("redact", "drop", "keep")
COLUMNS = ("messages", "chosen", "rejected")
TEXT_FIELDS = ("content", "reasoning")  # the message fields holding text (reasoning: where the schema has it)
# Regions whose national formats are tried, in order, for numbers written without a country code (+...).
REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "AU", "CA", "BR", "MX", "PL", "SE", "CH", "BE", "AT", "IE")

# A text can hold PII only if this matches (one vectorised pass over the column decides what Python looks at).
MAYBE = (r"@|\d[\d \t().-]{5,}\d|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:|-----BEGIN|"
         r"hf_|sk-|sk_|rk_|gh[pousr]_|github_pat_|glpat-|AKIA|ASIA|xox[abposr]-|AIza|npm_|pypi-|eyJ|[A-Z]{2}\d\d")

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d|\w)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
CARD = re.compile(r"(?<![\d-])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
PHONE = re.compile(r"(?<![\w+#/.-])(?<!\d )(?:\+\d[\d \t().-]{6,20}\d|(?:1[ \t.-]?)?\(\d{2,5}\)[ \t]?\d[\d \t.-]{4,14}\d|"
                   r"(?:\d[ \t.-])?\d{2,6}[ \t.-]\d[\d \t.-]{3,14}\d)(?![\w-]|\.\d)")
DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
# Words right before a number that say it is not an address or a phone number.
VERSION_WORDS = re.compile(r"(?:version|firmware|release|build|update|\bv)\W{0,3}$", re.I)
ID_WORDS = re.compile(r"(?:isbn(?:-1[03])?|issn|order|invoice|tracking|ref(?:erence)?|id|sku|serial)\W{0,3}$", re.I)
# Issuer prefixes (IIN ranges) of the card networks: Visa, Mastercard (51-55 and 2221-2720), Amex, Discover, JCB,
# Diners, UnionPay, Maestro. A Luhn-valid number outside them is an id, not a card.
CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|6011|64[4-9]|65|35(?:2[89]|[3-8]\d)|"
                         r"30[0-5]|3[689]|62|5[06-8]|6\d")


@cache
def _suffixes():
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the list bundled with tldextract: no download


def _email(text: str, match: re.Match) -> str | None:
    value = match.group().rstrip(".-")
    rest = text[match.start() + len(value):]
    if rest.startswith(":") and rest[1:2].strip():  # git@github.com:org/repo.git is an SSH remote, not an address
        return None
    return value.lower() if _suffixes()(value.rsplit("@", 1)[1]).suffix else None


def _ip(text: str, value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified or address.is_multicast or (address.version == 4 and address.is_link_local):
        return None  # the machine itself, no address, groups, 169.254/16 (self-assigned; cloud metadata): nobody's
    if address.version == 4 and value.startswith("255."):
        return None  # a netmask
    return str(address)


def _card(value: str) -> str | None:
    from stdnum import luhn

    digits = re.sub(r"[ -]", "", value)
    if not 13 <= len(digits) <= 19 or not CARD_PREFIX.match(digits) or not luhn.is_valid(digits):
        return None
    return digits


def _iban(value: str) -> str | None:
    from stdnum import iban

    compact = value.replace(" ", "")
    return compact if iban.is_valid(compact) else None


def _phone(value: str, regions: tuple[str, ...]) -> str | None:
    import phonenumbers

    digits = re.sub(r"\D", "", value)
    international = value.startswith("+")
    if not 7 <= len(digits) <= 15 or (len(digits) > 12 and not international) or DATE.fullmatch(value):
        return None
    if "." in value and not international and len(value.split(".")) != 3:  # 415.555.0132, not 185.47.106.167
        return None
    if len(digits) < 10 and max(map(len, re.findall(r"\d+", value))) <= 2:  # 15 16 23 42: a list of numbers
        return None
    for region in (None,) if international else regions:
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


def find(text: str, types: tuple[str, ...] = TYPES, regions: tuple[str, ...] = REGIONS) -> list[tuple[str, int, int, str]]:
    """(type, start, end, normalized value) of each PII span in `text`, in order; overlapping spans go to the type
    first in TYPES.

    >>> [(t, v) for t, _, _, v in find("Mail Jo.Doe@Example.com or call +44 20 7946 0958, not v1.2.3.4")]
    [('email', 'jo.doe@example.com'), ('phone', '+442079460958')]
    """
    found: list[tuple[str, int, int, str]] = []
    if "credential" in types:
        found += [("credential", m.start(), m.end(), m.group()) for m in TOKEN.finditer(text)]
    if "email" in types:
        found += [("email", m.start(), m.start() + len(v), v) for m in EMAIL.finditer(text) if (v := _email(text, m))]
    if "iban" in types:
        found += [("iban", m.start(), m.end(), v) for m in IBAN.finditer(text) if (v := _iban(m.group()))]
    if "credit_card" in types:
        found += [("credit_card", m.start(), m.end(), v) for m in CARD.finditer(text) if (v := _card(m.group()))]
    if "ip_address" in types:
        found += [("ip_address", m.start(), m.end(), v) for pattern in (IPV4, IPV6) for m in pattern.finditer(text)
                  if not VERSION_WORDS.search(text[max(0, m.start() - 12):m.start()]) and (v := _ip(text, m.group()))]
    if "phone" in types:
        found += [("phone", m.start(), m.end(), v) for m in PHONE.finditer(text)
                  if not ID_WORDS.search(text[max(0, m.start() - 14):m.start()]) and (v := _phone(m.group(), regions))]
    kept: list[tuple[str, int, int, str]] = []
    for span in sorted(found, key=lambda s: (TYPES.index(s[0]), s[1])):
        if all(span[2] <= k[1] or k[2] <= span[1] for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s[1])


def _arguments_of(dtype: pl.DataType) -> bool:
    """Whether a message struct has tool_calls[].function.arguments (the OpenAI shape records use)."""
    calls = {f.name: f.dtype for f in dtype.fields}.get("tool_calls") if isinstance(dtype, pl.Struct) else None
    call = calls.inner if isinstance(calls, pl.List) else None
    function = {f.name: f.dtype for f in call.fields}.get("function") if isinstance(call, pl.Struct) else None
    return isinstance(function, pl.Struct) and "arguments" in {f.name for f in function.fields}


def _texts(df: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """One row per text of a turn: (row, column, turn, field, call, text), in reading order: each message's fields of
    TEXT_FIELDS, then its tool calls' arguments (field len(TEXT_FIELDS), `call` their index). Fields are read by
    name, so messages with more fields than role and content work as they are."""
    frames = []
    index = pl.int_range(pl.len(), dtype=pl.Int64).alias("row")
    for c, column in enumerate(columns):
        if column not in df.columns or not isinstance(df.schema[column], pl.List):
            continue
        inner = df.schema[column].inner
        names = {f.name for f in inner.fields} if isinstance(inner, pl.Struct) else set()
        for f, field in enumerate(TEXT_FIELDS):
            if field not in names:
                continue
            texts = df.select(index, pl.col(column).list.eval(pl.element().struct.field(field)).alias("text"))
            texts = texts.with_columns(pl.int_ranges(pl.col("text").list.len()).alias("turn"))
            frames.append(texts.explode("text", "turn").drop_nulls("text")
                          .with_columns(pl.lit(c).alias("column"), pl.lit(f).alias("field"), pl.lit(0).alias("call")))
        if _arguments_of(inner):
            calls = df.select(index, pl.col(column).list.eval(pl.element().struct.field("tool_calls")).alias("calls"))
            calls = calls.with_columns(pl.int_ranges(pl.col("calls").list.len()).alias("turn")).explode("calls", "turn")
            calls = calls.drop_nulls("calls").with_columns(pl.int_ranges(pl.col("calls").list.len()).alias("call"))
            calls = calls.explode("calls", "call").drop_nulls("calls").select(
                "row", pl.col("calls").struct.field("function").struct.field("arguments").alias("text"), "turn",
                pl.lit(c).alias("column"), pl.lit(len(TEXT_FIELDS)).alias("field"), "call")
            frames.append(calls.drop_nulls("text"))
    schema = {"row": pl.Int64, "text": pl.String, "turn": pl.Int64, "column": pl.Int32, "field": pl.Int32, "call": pl.Int64}
    if not frames:
        return pl.DataFrame(schema=schema)
    frames = [f.select(pl.col(name).cast(dtype) for name, dtype in schema.items()) for f in frames]
    return pl.concat(frames).sort("row", "column", "turn", "field", "call")


def _patch(df: pl.DataFrame, column: str, rebuilt: pl.DataFrame) -> pl.Series:
    """`column` with the rows of `rebuilt` (row, rebuilt) in place of its own."""
    rows = df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col(column))
    merged = rows.join(rebuilt, on="row", how="left", maintain_order="left")
    return merged.select(pl.coalesce("rebuilt", column).alias(column)).to_series()


def _replace(df: pl.DataFrame, column: str, field: str, changes: pl.DataFrame) -> pl.Series:
    """`column` with the texts in `changes` (row, turn, new) put into `field` of those turns."""
    touched = df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col(column)).join(
        changes.select("row").unique(), on="row", how="semi")
    turns = touched.with_columns(pl.int_ranges(pl.col(column).list.len()).alias("turn")).explode(column, "turn")
    turns = turns.join(changes, on=["row", "turn"], how="left", maintain_order="left").with_columns(
        pl.col(column).struct.with_fields(pl.coalesce("new", pl.field(field)).alias(field)))
    return _patch(df, column, turns.group_by("row", maintain_order=True).agg(pl.col(column).alias("rebuilt")))


def _replace_arguments(df: pl.DataFrame, column: str, changes: list[tuple[int, int, int, str]]) -> pl.Series:
    """`column` with new tool-call arguments (row, turn, call, new): the touched rows only, rebuilt in Python (a
    list inside a list inside a list is beyond a Polars expression that stays readable)."""
    new = {(row, turn, call): text for row, turn, call, text in changes}
    rows = sorted({row for row, _, _, _ in changes})
    conversations = df[column].gather(rows).to_list()
    for row, conversation in zip(rows, conversations):
        for turn, message in enumerate(conversation):
            for call, tool_call in enumerate(message.get("tool_calls") or []):
                if (row, turn, call) in new:
                    tool_call["function"]["arguments"] = new[(row, turn, call)]
    rebuilt = pl.DataFrame({"row": pl.Series(rows, dtype=pl.Int64),
                            "rebuilt": pl.Series(conversations, dtype=df.schema[column])})
    return _patch(df, column, rebuilt)


def scrub(df: pl.DataFrame, *, drop: tuple[str, ...] | list[str] = (), keep: tuple[str, ...] | list[str] = (),
          columns: tuple[str, ...] | list[str] = COLUMNS, regions: tuple[str, ...] | list[str] = REGIONS) -> pl.DataFrame:
    """Stage: redact every type of TYPES but those in `keep` (not looked for) with conversation-consistent
    placeholders in every turn of `columns`; rows holding a `drop` type also get `pii:<type>` (the first in TYPES
    order). Counts per type in meta["pii"]["found"]."""
    drop, keep, columns, regions = tuple(drop), tuple(keep), tuple(columns), tuple(regions)
    unknown = sorted((set(drop) | set(keep)) - set(TYPES))
    if unknown or set(drop) & set(keep):
        raise ValueError(f"pii types must be in {list(TYPES)}, each dropped, kept or (by default) redacted; got "
                         f"drop={list(drop)}, keep={list(keep)}")
    types = tuple(t for t in TYPES if t not in keep)
    texts = _texts(df, columns).filter(pl.col("text").str.contains(MAYBE))
    numbers: dict[int, dict[tuple[str, str], int]] = {}  # per row: (type, value) -> its placeholder's number
    found: dict[int, dict[str, int]] = {}
    changed: dict[tuple[int, int], list[tuple]] = {}  # (column, field) -> [(row, turn, call, new text)]
    for row, text, turn, c, f, call in texts.select("row", "text", "turn", "column", "field", "call").iter_rows():
        spans = find(text, types, regions)
        if not spans:
            continue
        seen, counts, pieces, last = numbers.setdefault(row, {}), found.setdefault(row, {}), [], 0
        for kind, start, end, value in spans:
            counts[kind] = counts.get(kind, 0) + 1
            number = seen.setdefault((kind, value), 1 + sum(k == kind for k, _ in seen))
            pieces += [text[last:start], f"<{PLACEHOLDER[kind]}_{number}>"]
            last = end
        changed.setdefault((c, f), []).append((row, turn, call, "".join(pieces) + text[last:]))
    out = df
    for (c, f), rows in changed.items():
        if f == len(TEXT_FIELDS):
            out = out.with_columns(_replace_arguments(out, columns[c], rows))
            continue
        changes = pl.DataFrame([(r, t, new) for r, t, _, new in rows],
                               schema={"row": pl.Int64, "turn": pl.Int64, "new": pl.String}, orient="row")
        out = out.with_columns(_replace(out, columns[c], TEXT_FIELDS[f], changes))
    metas = meta_dicts(out)
    reasons = out["drop_reason"].to_list() if "drop_reason" in out.columns else [None] * out.height
    for row, meta in enumerate(metas):
        counts = found.get(row, {})
        earlier = meta.get("pii", {}).get("found", {})
        meta["pii"] = {"found": {k: earlier.get(k, 0) + counts.get(k, 0) for k in sorted({*earlier, *counts})}}
        if reasons[row] is None:
            reasons[row] = next((f"pii:{t}" for t in types if t in drop and counts.get(t)), None)
    return out.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def tally(rows_in: pl.DataFrame, rows_out: pl.DataFrame) -> dict[str, int]:
    """What one pass found per type in a shard (the runner sums it per stage: manifest `counts`, the card)."""
    def total(df: pl.DataFrame) -> dict[str, int]:
        if "meta" not in df.columns or not df.height:
            return {}
        sums = df.select(pl.col("meta").str.json_path_match(f"$.pii.found.{t}").cast(pl.Int64).sum().alias(t) for t in TYPES)
        return {t: int(v) for t, v in sums.row(0, named=True).items() if v}
    before, after = total(rows_in), total(rows_out)
    return {t: n for t in TYPES if (n := after.get(t, 0) - before.get(t, 0))}


scrub.tally = tally  # type: ignore[attr-defined]  (read by pipeline.recipes.runner)


def scrubbed(df: pl.DataFrame) -> pl.Series:
    """Whether each row went through a PII pass (its meta has "pii")."""
    return df["meta"].str.json_path_match("$.pii").is_not_null()
