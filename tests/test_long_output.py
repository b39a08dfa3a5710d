"""Long-output curation (arXiv 2410.10210): the length-requirement extractor, S_l's golden values, the filters."""
import polars as pl
import pytest

import filters
from filters.long_output import LONG_OUTPUT, length_requirements, length_score


def rows(pairs):
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(pairs))], "source": ["t"] * len(pairs),
                         "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs],
                         "meta": ["{}"] * len(pairs)})


@pytest.mark.parametrize("prompt, found", [
    ("Write a 500 words story about a lighthouse.", [500]), ("Write an essay of 2,000 words.", [2000]),
    ("请写一篇800字的文章", [800]), ("写一篇五百字的短文", [500]), ("写一篇两千字的报告", [2000]), ("写一篇一万字的小说", [10000]),
    ("Write 200 words, then a 300 words summary.", [200, 300]), ("写三千字，再写五百字", [3000, 500]),
    ("Write a long story.", []),
])
def test_length_requirements(prompt, found):
    assert length_requirements(prompt) == found


def test_length_score_golden_values():
    assert length_score(300, 300) == 100.0
    assert round(length_score(300, 600), 1) == 66.7 and length_score(300, 150) == 50.0 and length_score(300, 1200) == 0.0
    assert length_score(300, 0) == 0.0


def test_the_filters_keep_one_met_requirement_and_count_the_rest():
    words = lambda n: " ".join(["word"] * n)  # noqa: E731
    df = rows([("Write a 100 words story.", words(100)),        # S_l 100: kept
               ("Write a 100 words story.", words(110)),        # S_l 96.7: kept
               ("Write a 100 words story.", words(200)),        # S_l 66.7: dropped
               ("写三千字的文章", "字" * 2800),                     # S_l 93.3: kept
               ("Write 100 words, then 200 words.", words(300)),  # two requirements: dropped
               ("Write a story.", words(100))])                 # none: dropped
    kept, counts = filters.apply(df, LONG_OUTPUT)
    assert kept["id"].to_list() == ["r0", "r1", "r3"]
    assert counts == {"single_length_requirement": 2, "length_score_at_least": 1}
    strict, _ = filters.apply(df, [{"name": "length_score_at_least", "min_score": 97}])
    assert strict["id"].to_list() == ["r0"]


@pytest.mark.real_llm
def test_curate_with_long_output_and_ifd_on_smollm2(tmp_path):
    """`aligndata curate --long-output --ifd-max 1.0` on the real SmolLM2 (llama.cpp): both filters in the funnel
    and the card, IFD computed for every kept row."""
    import json

    from typer.testing import CliRunner

    from pipeline.cli.commands import app

    story = ("The lighthouse keeper climbed the stairs every evening to light the lamp for the ships at sea. "
             "One night a storm came and the keeper saw a small boat fighting the waves near the rocks. ")
    data = [("Write a 40 words story about a lighthouse keeper.", story),                 # 36 words: S_l 94.4
            ("Write a 100 words story about a lighthouse keeper.", story),                # 36 words: S_l 11.1
            ("Write a story about a lighthouse keeper.", story),                          # no stated length
            ("Describe a storm at sea in 30 words.", "Dark waves rose high, wind screamed through the rigging, "
             "rain lashed the deck and lightning split the black sky while the small crew held on and prayed for dawn.")]
    source = tmp_path / "long.jsonl"
    source.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in data))
    result = CliRunner().invoke(app, ["curate", "--input", str(source), "--out", str(tmp_path / "run"), "--k", "4",
                                      "--engine", "llamacpp", "--long-output", "--ifd-max", "1.0", "--dedup", "exact"])
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()]
    quality = next(e for e in manifest if e["stage"] == "quality-filtered")
    assert quality["drops"] == {"length_score_at_least": 1, "single_length_requirement": 1} and quality["rows_out"] == 2
    ifd = next(e for e in manifest if e["stage"] == "ifd")
    assert ifd["rows_in"] == 2 and ifd["nulls"] == {}
    selected = pl.read_parquet(tmp_path / "run" / "export" / "data.parquet")
    assert selected.height >= 1 and all(0 < v <= 1.0 for v in selected["ifd"].to_list())
    card = (tmp_path / "run" / "export" / "README.md").read_text()
    assert "https://arxiv.org/abs/2410.10210" in card and "https://arxiv.org/abs/2308.12032" in card
    assert "ifd_at_most(limit=1.0)" in card and "length_score_at_least(min_score=80.0)" in card
