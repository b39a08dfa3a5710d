"""The `pii` stage: each entity type found and normalized, PII-looking non-PII left alone, conversation-consistent
placeholders over messages/chosen/rejected (and a message's reasoning), drop mode's counted reasons, counts in meta
and the manifest, and no value in the manifest, stage.json, card or export of a run."""
import json

import polars as pl
import pytest

from pipeline.core.records import conform
from pipeline.select.pii import TYPES, find, scrub

FOUND = [  # (text, type, normalized value)
    ("write to Jane.Roe+news@Mail.Example.co.uk today", "email", "jane.roe+news@mail.example.co.uk"),
    ("call me on (415) 555-0132 after six", "phone", "+14155550132"),
    ("my mobile is +44 7911 123456", "phone", "+447911123456"),
    ("ring 030 901820 45 in Berlin", "phone", None),  # national formats: the first region where it is valid
    ("the server is at 203.0.113.7, port 22", "ip_address", "203.0.113.7"),
    ("router 192.168.1.23 and fe80::1ff:fe23:4567:890a", "ip_address", "192.168.1.23"),
    ("card 4539 1488 0343 6467 declined", "credit_card", "4539148803436467"),
    ("Mastercard 2221-0012-3412-3450 works", "credit_card", "2221001234123450"),
    ("amex 378282246310005 expires", "credit_card", "378282246310005"),
    ("pay to DE89 3704 0044 0532 0130 00 please", "iban", "DE89370400440532013000"),
    ("IBAN GB29NWBK60161331926819.", "iban", "GB29NWBK60161331926819"),
    ("OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234", "credential", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ012345 leaked", "credential", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
    ("aws AKIAIOSFODNN7EXAMPLE key", "credential", "AKIAIOSFODNN7EXAMPLE"),
]
NOT_PII = [  # looks like PII, is not
    "upgrade from 3.12.1 to 124.0.6367.91 (build 10.0.19045.3803)",
    "firmware 1.0.2.3 bricked it",
    "released 2024-03-15, due 15/03/2024, at 2023-11-30T14:22:05Z",
    "it costs $1,299.99 or USD 15,000.00",
    "commit a3f5c9e2b1d4e6f7a8b9c0d1e2f3a4b5c6d7e8f9 (a3f5c9e)",
    "id 550e8400-e29b-41d4-a716-446655440000",
    "order #114-3941689-8772232 and ORD-2024-127770, ISBN 0-306-40615-2",
    "2^31 - 1 = 2147483647; 12345 * 6789 = 83810205; 4 8 15 16 23 42",
    "listen on 127.0.0.1:8000 or 0.0.0.0:8080 or [::1]:3000, mask 255.255.255.0",
    "clone git@github.com:acme/payments-api.git; icon@2x.png",
    "card 4539 1488 0343 6468 fails Luhn; IBAN DE88 3704 0044 0532 0130 00 fails mod 97",
    "at 37.7749, -122.4194 in 1920x1080",
]


@pytest.mark.parametrize("text, kind, value", FOUND, ids=[f"{k}:{t[:20]}" for t, k, _ in FOUND])
def test_each_type_is_found_and_normalized(text, kind, value):
    found = [(t, v) for t, _, _, v in find(text)]
    assert (kind, value) in found if value else [t for t, _ in found] == [kind]


@pytest.mark.parametrize("text", NOT_PII)
def test_pii_looking_values_are_left_alone(text):
    assert find(text) == []


def test_a_private_key_block_is_one_secret():
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\nAAAA\n-----END OPENSSH PRIVATE KEY-----"
    (kind, start, end, _), = find(f"my key:\n{key}\nthanks")
    assert kind == "credential" and end - start == len(key)


def frame(rows: list[dict]) -> pl.DataFrame:
    base = {"source": "import", "meta": "{}", "messages": None, "chosen": None, "rejected": None}
    return pl.from_arrow(conform(pl.DataFrame([base | r for r in rows]), where="test"))


def contents(conversation) -> list[str]:
    return [m["content"] for m in conversation or []]


def test_placeholders_are_consistent_within_a_conversation_and_restart_in_the_next():
    df = frame([
        {"id": "a", "messages": [{"role": "user", "content": "I'm Jo.Doe@example.com, backup ann@web.de, phone (415) 555-0132"},
                                 {"role": "assistant", "content": "Noted jo.doe@EXAMPLE.com and +1 415-555-0132."}],
         "chosen": [{"role": "assistant", "content": "Mail ann@web.de then jo.doe@example.com"}],
         "rejected": [{"role": "assistant", "content": "Call 415.555.0132 or write to zed@web.de"}]},
        {"id": "b", "messages": [{"role": "user", "content": "mine is zed@web.de"}]},
    ])
    out = scrub(df)
    a, b = out.row(0, named=True), out.row(1, named=True)
    assert contents(a["messages"]) == ["I'm <EMAIL_1>, backup <EMAIL_2>, phone <PHONE_1>", "Noted <EMAIL_1> and <PHONE_1>."]
    assert contents(a["chosen"]) == ["Mail <EMAIL_2> then <EMAIL_1>"]
    assert contents(a["rejected"]) == ["Call <PHONE_1> or write to <EMAIL_3>"]
    assert contents(b["messages"]) == ["mine is <EMAIL_1>"]  # numbering is per conversation
    assert json.loads(a["meta"])["pii"] == {"found": {"email": 6, "phone": 3}}
    assert a["drop_reason"] is None and a["messages"][0]["role"] == "user"


def test_reasoning_and_tool_call_arguments_are_scrubbed_and_other_message_fields_kept():
    calls = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
             {"id": "c2", "type": "function", "function": {"name": "book", "arguments": '{"to": "ann@web.de", "n": 2}'}}]
    df = frame([{"id": "a", "messages": [{"role": "user", "content": "book for ann@web.de, call +44 7911 123456"},
                                         {"role": "assistant", "content": "", "reasoning": "ann@web.de wants a room",
                                          "tool_calls": calls},
                                         {"role": "tool", "content": '{"booked": "bob@web.de"}', "tool_call_id": "c2"}]},
                {"id": "b", "messages": [{"role": "user", "content": "hi"}]}])
    out = scrub(df)
    user, assistant, tool = out.row(0, named=True)["messages"]
    assert user["content"] == "book for <EMAIL_1>, call <PHONE_1>" and assistant["reasoning"] == "<EMAIL_1> wants a room"
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == ["{}", '{"to": "<EMAIL_1>", "n": 2}']
    assert assistant["tool_calls"][1]["id"] == "c2" and assistant["content"] == "" and tool["tool_call_id"] == "c2"
    assert tool["content"] == '{"booked": "<EMAIL_2>"}' and out.row(1, named=True)["messages"] == df.row(1, named=True)["messages"]
    assert out.schema["messages"] == df.schema["messages"]


def test_drop_mode_counts_each_row_once_under_its_first_type_and_still_redacts_it():
    df = frame([
        {"id": "key", "messages": [{"role": "user", "content": "key hf_abcdefghijklmnopqrstu and ann@web.de"}]},
        {"id": "mail", "messages": [{"role": "user", "content": "ann@web.de"}]},
        {"id": "card", "messages": [{"role": "user", "content": "4539 1488 0343 6467"}]},
        {"id": "clean", "messages": [{"role": "user", "content": "version 1.2.3, 2024-01-01"}]},
        {"id": "gone", "drop_reason": "earlier_filter", "messages": [{"role": "user", "content": "ann@web.de"}]},
    ])
    out = scrub(df, drop=["credential", "credit_card"], keep=["email"])
    assert out["drop_reason"].to_list() == ["pii:credential", None, "pii:credit_card", None, "earlier_filter"]
    assert contents(out.row(0, named=True)["messages"]) == ["key <CREDENTIAL_1> and ann@web.de"]  # email kept as asked
    assert contents(out.row(2, named=True)["messages"]) == ["<CREDIT_CARD_1>"]  # dropped rows hold no value either
    counts = dict(out.filter(pl.col("drop_reason").str.starts_with("pii:")).group_by("drop_reason").len().iter_rows())
    assert counts == {"pii:credential": 1, "pii:credit_card": 1}
    with pytest.raises(ValueError, match="pii types must be in"):
        scrub(df, drop=["name"])


def test_a_second_pass_finds_nothing_new_and_keeps_the_counts():
    df = frame([{"id": "a", "messages": [{"role": "user", "content": "ann@web.de, +44 7911 123456, 203.0.113.7"}]}])
    once = scrub(df)
    twice = scrub(once)
    assert twice["messages"].to_list() == once["messages"].to_list()
    assert json.loads(twice["meta"][0])["pii"] == json.loads(once["meta"][0])["pii"] == {
        "found": {"email": 1, "ip_address": 1, "phone": 1}}


PLANTED = {"email": "priya.raman@gmail.com", "phone": "+44 7911 123456", "credit_card": "4539 1488 0343 6467",
           "iban": "DE89 3704 0044 0532 0130 00", "ip_address": "203.0.113.7", "credential": "hf_PLANTEDsecretValue0123456789"}


def planted_input(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Row {i}: my {kind} is {value}. Please help with my account."},
                          {"role": "assistant", "content": f"I will not repeat your {kind}, but I can help you today."}]}
            for i, (kind, value) in enumerate(PLANTED.items())]
    rows.append({"messages": [{"role": "user", "content": "Explain how rainbows form after the rain."},
                              {"role": "assistant", "content": "Sunlight refracts in droplets and splits into colours."}]})
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_run_counts_per_type_in_the_manifest_and_card_and_writes_no_value_outside_its_input(tmp_path):
    from pipeline.recipes import input_job
    from pipeline.recipes.privacy import pii_step

    out = tmp_path / "run"
    summary = input_job(out, input_path=planted_input(tmp_path), steps=[pii_step(drop=["credential"])], engine=None)
    stage = summary["stages"]["pii"]
    assert stage["counts"] == {t: 1 for t in TYPES} and stage["drops"] == {"pii:credential": 1}
    assert stage["rows_in"] == 7 and stage["rows_out"] == 6
    card = (out / "export" / "README.md").read_text()
    assert "## Personal data" in card and "| email | 1 | redact | 0 |" in card and "| credential | 1 | drop | 1 |" in card
    exported = pl.read_parquet(out / "export" / "data.parquet")
    assert all(json.loads(m)["pii"]["found"] is not None for m in exported["meta"])
    # the values are in the copy of the input only: not in the manifest, stage.json, the pii stage's shards, the card
    for path in out.rglob("*"):
        if path.is_file() and "input" not in path.relative_to(out).parts:
            data = path.read_bytes()
            assert not [v for v in PLANTED.values() if v.encode() in data], path
