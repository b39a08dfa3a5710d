"""The overlap audit (arXiv 2510.18554) on the real MiniLM, and the extraction experiment on the real SmolLM2."""
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.cli.commands import app
from pipeline.select import audit

ORIGINAL = "Explain how a binary search works on a sorted list of 1000 numbers."
CHANGED_NUMBERS = "On a sorted list of 250,000 numbers, explain how binary search works."


def rows(texts, prefix="a"):
    return pl.DataFrame({"id": [f"{prefix}{i}" for i in range(len(texts))], "source": ["t"] * len(texts),
                         "messages": [[{"role": "user", "content": t}] for t in texts], "meta": ["{}"] * len(texts)})


def jsonl(path, texts):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]})
                            + "\n" for t in texts))
    return path


def test_a_paraphrase_with_changed_numbers_is_close_in_meaning_and_far_as_a_string(tmp_path):
    reference = jsonl(tmp_path / "train.jsonl", [ORIGINAL, "Write a limerick about a cat who loves jazz."])
    out = audit.audit(rows([CHANGED_NUMBERS, ORIGINAL, "What are the main causes of inflation?"]), against=str(reference))
    similarity, string = out["ref_similarity"].to_list(), out["ref_string_similarity"].to_list()
    # the README's numbers: cosine 0.947 with MiniLM (under the default 0.95), Indel 0.46
    assert similarity[0] == pytest.approx(0.947, abs=0.002) and string[0] == pytest.approx(0.46, abs=0.01)
    assert similarity[1] == pytest.approx(1.0, abs=1e-5) and string[1] == 1.0  # a verbatim copy
    assert similarity[2] < 0.5 and string[2] < 0.5
    assert out["ref_nearest"].to_list()[:2] == [out["ref_nearest"][1]] * 2
    at_default = audit.summary(out)  # the default threshold, 0.95: the rewrite is not counted
    assert (at_default["semantic_overlap"], at_default["string_overlap"]) == (1, 1)
    counts = audit.summary(out, threshold=0.9)  # at 0.9 it is, and string matching still misses it
    assert (counts["semantic_overlap"], counts["string_overlap"]) == (2, 1)
    assert sum(counts["histograms"]["ref_similarity"]["counts"]) == 3


def test_the_audit_command_writes_counts_and_a_report_with_the_histograms(tmp_path):
    reference = jsonl(tmp_path / "train.jsonl", [ORIGINAL])
    data = jsonl(tmp_path / "mine.jsonl", [CHANGED_NUMBERS, ORIGINAL, "Name three rivers in Africa."])
    result = CliRunner().invoke(app, ["audit", "--input", str(data), "--against", str(reference), "--out",
                                      str(tmp_path / "run"), "--threshold", "0.9"])
    assert result.exit_code == 0, result.output
    assert "audit: 2 of 3 rows overlap by meaning (cosine >= 0.9), 1 by string" in result.output
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "ref_string_similarity" in page and "<svg" in page
    assert json.loads((tmp_path / "run" / "audit.json").read_text())["rows"] == 3
    neither = CliRunner().invoke(app, ["audit", "--against", str(reference), "--out", str(tmp_path / "x")])
    assert neither.exit_code == 2 and "pass --input DATA, or --model M with --n N" in neither.output


@pytest.mark.real_llm
def test_extraction_finds_the_generations_a_model_was_trained_on(tmp_path):
    """SmolLM2's own seeded Magpie instructions stand in for its training data: sampling again with the same seeds
    regurgitates all of them, and other seeds mostly do not."""
    from pipeline.engines import EngineSpec
    from pipeline.recipes import magpie_job

    magpie_job(tmp_path / "train", n=4, seed=0, engine=EngineSpec.make("llamacpp"), response_max_tokens=16)
    trained = tmp_path / "train" / "instructions"  # a stage directory is a dataset too
    base = ["audit", "--against", str(trained), "--model", "smollm2", "--engine", "llamacpp", "--n", "4"]
    same = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "same"), "--seed", "0"])
    assert same.exit_code == 0, same.output
    found = json.loads((tmp_path / "same" / "audit.json").read_text())
    assert found["semantic_overlap"] == found["string_overlap"] == found["rows"] == 4
    other = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "other"), "--seed", "7"])
    assert other.exit_code == 0, other.output
    assert json.loads((tmp_path / "other" / "audit.json").read_text())["semantic_overlap"] < 4


def test_an_empty_reference_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    data = jsonl(tmp_path / "mine.jsonl", [ORIGINAL])
    result = CliRunner().invoke(app, ["audit", "--input", str(data), "--against", str(tmp_path / "empty.jsonl"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "empty.jsonl" in result.output and result.exception.__class__ is SystemExit
