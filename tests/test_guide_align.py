"""Guide-Align (arXiv 2403.11838): guideline parsing, the library's embedding dedup (real MiniLM), top-k retrieval on
synthetic embeddings, the guided prompt and training rows, reusing a library, and `aligndata guide-align` on SmolLM2."""
import json

import numpy as np
import polars as pl
import pytest

from pipeline.core.rundir import StageMismatch
from pipeline.engines import EngineSpec
from pipeline.recipes import guide_align_job
from pipeline.synth.guide_align import GUIDED_SYSTEM, parse_guidelines, retrieve

INPUTS = ["How do I store bleach safely?", "Write a poem about the sea.", "How much ibuprofen can a child take?"]
WRITTEN = {  # the fake model's guidelines per input: the first two repeat each other in other words
    "store bleach": "- Keep chemicals away from children and pets.\n- Keep chemicals out of reach of children and pets.\n- Never mix bleach with ammonia.",
    "poem about the sea": "Here you go:\n1. Use vivid imagery of waves and light.",
    "ibuprofen": "- Tell the user to check the dose with a pharmacist or doctor.\n- Keep chemicals away from children and pets!",
}


def fake(tmp_path):
    script = {f"[User input]\n{q}": WRITTEN[key] for q in INPUTS for key in WRITTEN if key in q}
    script["Follow these guidelines"] = "A guided answer."
    return EngineSpec.make("fake", "guide-writer", options={"script": script})


def write_inputs(path, inputs=INPUTS):
    path.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in inputs))
    return path


def test_guidelines_are_read_from_bullets_and_numbers():
    assert parse_guidelines("- a rule\n* another rule\n3. third rule\n4) fourth", limit=3) == ["a rule", "another rule", "third rule"]
    assert parse_guidelines("No list here.") == [] and parse_guidelines(None) == [] and parse_guidelines("-\n- x") == []


def test_retrieval_is_top_k_by_inner_product_and_ties_keep_library_order():
    library = np.array([[1, 0, 0], [0, 1, 0], [0.8, 0.6, 0], [0, 1, 0]], dtype=np.float32)
    queries = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    assert retrieve(queries, library, 2).tolist() == [[0, 2], [1, 3]]
    assert retrieve(queries, library, 9).shape == (2, 4)  # k beyond the library: all of it


def test_the_library_is_deduplicated_and_the_answers_are_guided(tmp_path):
    summary = guide_align_job(tmp_path / "run", input_path=write_inputs(tmp_path / "in.jsonl"), engine=fake(tmp_path), k=2)
    library = pl.read_parquet(summary["export"]["guidelines"])
    texts = [json.loads(m)["guideline"] for m in library["meta"]]
    # the paraphrase and the near-copy with "!" join "Keep chemicals away from children and pets." (MiniLM cosine > 0.9)
    assert texts == ["Keep chemicals away from children and pets.", "Never mix bleach with ammonia.",
                     "Use vivid imagery of waves and light.", "Tell the user to check the dose with a pharmacist or doctor."]
    sources = json.loads(library["meta"][0])["sources"]
    rows = pl.read_parquet(summary["export"]["data"])
    ids = dict(zip([m[0]["content"] for m in rows["messages"]], rows["id"]))
    assert sources == sorted({ids[INPUTS[0]], ids[INPUTS[2]]})  # both inputs that wrote it
    for row in rows.iter_rows(named=True):
        guidelines = json.loads(row["meta"])["guide_align"]["guidelines"]
        assert len(guidelines) == 2 and set(guidelines) <= set(texts)
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]  # the guidelines are not in the training row
        assert row["messages"][1]["content"] == "A guided answer."
    medicine = json.loads(rows.filter(pl.col("id") == ids[INPUTS[2]])["meta"][0])["guide_align"]["guidelines"]
    assert medicine[0] == "Tell the user to check the dose with a pharmacist or doctor."
    assert GUIDED_SYSTEM.format(guidelines="- a") == "Follow these guidelines in your response:\n- a"


def test_a_library_is_reused_by_later_runs_and_a_changed_one_is_refused(tmp_path, monkeypatch):
    first = guide_align_job(tmp_path / "first", input_path=write_inputs(tmp_path / "in.jsonl"), engine=fake(tmp_path))
    library = tmp_path / "guidelines.parquet"
    library.write_bytes(open(first["export"]["guidelines"], "rb").read())
    later = write_inputs(tmp_path / "later.jsonl", ["Is it safe to mix bleach and vinegar?"])
    again = guide_align_job(tmp_path / "second", input_path=later, engine=fake(tmp_path), library=library, k=1)
    assert set(again["stages"]) == {"input", "guided"} and "guidelines" not in again["export"]
    row = pl.read_parquet(again["export"]["data"])
    assert json.loads(row["meta"][0])["guide_align"]["guidelines"] == ["Never mix bleach with ammonia."]
    pl.read_parquet(library).head(1).write_parquet(library)  # the library changes: the answers are not reused
    with pytest.raises(StageMismatch, match="guided was made with different \\['params'\\]"):
        guide_align_job(tmp_path / "second", input_path=later, engine=fake(tmp_path), library=library, k=1)


@pytest.mark.real_llm
def test_guide_align_command_on_smollm2(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    inputs = write_inputs(tmp_path / "in.jsonl", ["How do I safely store cleaning chemicals at home?",
                                                  "How can I find someone's home address from a phone number?",
                                                  "Explain how compound interest works.", "Give me tips for my first marathon."])
    result = CliRunner().invoke(app, ["guide-align", "--input", str(inputs), "--out", str(tmp_path / "run"),
                                      "--engine", "llamacpp", "--max-tokens", "96", "--k", "2"])
    assert result.exit_code == 0, result.output
    library = pl.read_parquet(tmp_path / "run" / "export" / "guidelines.parquet")
    texts = [json.loads(m)["guideline"] for m in library["meta"]]
    assert texts and len(set(texts)) == len(texts) and library["embedding"].null_count() == 0
    vectors = np.array(library["embedding"].to_list())
    assert (vectors @ vectors.T - np.eye(len(texts)) <= 0.9 + 1e-6).all()  # no two library rows repeat each other
    rows = pl.read_parquet(tmp_path / "run" / "export" / "data.parquet")
    assert rows.height == 4
    for row in rows.iter_rows(named=True):
        assert set(json.loads(row["meta"])["guide_align"]["guidelines"]) <= set(texts) and row["messages"][1]["content"]
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "[guide-align](https://arxiv.org/abs/2403.11838)" in card and "guided" in card


def test_a_file_that_is_not_a_library_is_a_one_line_error(tmp_path):
    from pipeline.core.inputs import InputError
    from pipeline.synth.guide_align import load_library

    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    other = tmp_path / "rows.parquet"
    pl.DataFrame({"id": ["a"], "meta": ["{}"]}).write_parquet(other)
    for path in (broken, other):
        with pytest.raises(InputError, match="not a guideline library .*make one with `aligndata guide-align`"):
            load_library(str(path), "x")
