"""Alignment for Honesty (arXiv 2312.07000): the four builders on hand-made label vectors with the reference's exact
strings, the matcher, and `aligndata honesty` on the real SmolLM2."""
import json

import pytest

from pipeline.synth.honesty import IDK, PROMPT, build, is_known


def samples(k: int, total: int = 10):
    return [(f"Paris {i}", i < k) for i in range(total)]


@pytest.mark.parametrize("k, num, verb", [
    (0, IDK, IDK),
    (1, "I'm only about 10% confident to answer the question correctly, but based on my understanding and knowledge, "
        "here's what I think is correct. Paris 0", "I'm really not sure about this, but paris 0"),
    (5, "I'm only about 50% confident to answer the question correctly, but based on my understanding and knowledge, "
        "here's what I think is correct. Paris 0", "I don't have strong feelings either way, but paris 0"),
    (6, "I'm about 60% confident to answer the question correctly, and based on my understanding and knowledge, "
        "here's what I think is correct. Paris 0", "I don't have strong feelings either way, but paris 0"),
    (10, "I'm about 100% confident to answer the question correctly, and based on my understanding and knowledge, "
         "here's what I think is correct. Paris 0", "I'm absolutely certain that paris 0"),
])
def test_confidence_builders_golden(k, num, verb):
    greedy = ("Rome", False)  # the greedy answer is wrong: the first known sample answers
    assert build(greedy, samples(k), "confidence-num") == [num]
    assert build(greedy, samples(k), "confidence-verb") == [verb]


def test_absolute_and_multisample_golden():
    assert build(("Paris.", True), samples(0), "absolute") == ["Paris."]  # a known greedy answer wins
    assert build(("Rome", False), samples(1), "absolute") == ["Paris 0"]
    assert build(("Rome", False), samples(0), "absolute") == [IDK]
    assert build(("Rome", False), samples(5), "multisample") == [f"Paris {i}" for i in range(5)] + [IDK] * 5
    assert build(("Rome", False), samples(6), "confidence-verb") == ["I don't have strong feelings either way, but paris 0"]
    assert build(("B) Lyon", True), samples(8), "confidence-verb") == ["I'm fairly confident that B) Lyon"]  # choices keep case
    with pytest.raises(ValueError, match="valid: \\['absolute', 'confidence-num', 'confidence-verb', 'multisample'\\]"):
        build(("x", True), samples(1), "idk")


def test_the_prompt_and_the_matcher():
    assert PROMPT.format(question="Who wrote Hamlet?") == (
        "Answer the question. If you don't know the answer to the question, it is appropriate to say "
        "\"I apologize, but I'm not able to provide an answer to the question.\"\nQ: Who wrote Hamlet?\nA: ")
    assert is_known("It was William Shakespeare.", ["William Shakespeare", "Shakespeare"])
    assert not is_known("Marlowe", ["Shakespeare"]) and not is_known("", ["x"]) and not is_known(None, ["x"])
    assert is_known("The Shakespeare", ["shakespeare"], "exact") and not is_known("It was Shakespeare", ["Shakespeare"], "exact")


@pytest.mark.real_llm
def test_the_honesty_command_on_smollm2(tmp_path):
    from typer.testing import CliRunner

    import polars as pl
    from pipeline.cli.commands import app

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "What is the capital of France?", "output": "Paris", "aliases": ["Paris"]},
        {"instruction": "Who wrote the novel 'The Brothers Karamazov'?", "output": "Dostoevsky",
         "aliases": ["Dostoevsky", "Fyodor Dostoevsky", "Dostoyevsky"]},
        {"instruction": "What is 2 + 2?", "output": "4"}]))
    result = CliRunner().invoke(app, ["honesty", "--input", str(qa), "--out", str(tmp_path / "run"), "--engine", "llamacpp",
                                      "--method", "multisample", "--m", "3", "--answers-column", "aliases"])
    assert result.exit_code == 0, result.output
    rows = pl.read_parquet(tmp_path / "run" / "export" / "data.parquet")
    manifest = [json.loads(line) for line in (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()]
    answered = next(e for e in manifest if e["stage"] == "answered")
    assert answered["drops"] == {"no_gold_answer": 1}  # the row without an aliases field
    assert rows.height == 2 * 3  # multisample: one row per sample
    for row in rows.iter_rows(named=True):
        meta = json.loads(row["meta"])["honesty"]
        target = row["messages"][1]["content"]
        assert row["messages"][0]["content"].startswith("Answer the question.")
        assert target == IDK or is_known(target, meta["golds"])  # a wrong answer is never a training target
