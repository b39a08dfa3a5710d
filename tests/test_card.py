"""Dataset cards: the golden example, valid Hub metadata, and no secret in anything a run writes."""
import json
from pathlib import Path

from huggingface_hub import DatasetCard

from pipeline.ship import card
from pipeline.engines import EngineSpec
from pipeline.recipes import magpie_job

EXAMPLE = Path(__file__).parent.parent / "data_cards" / "example"
PLANTED = "hf_PLANTEDtokenDoNotLeak0123456789"


def test_golden_card():
    ctx = json.loads((EXAMPLE / "context.json").read_text())
    rendered = card.render(ctx, pretty_name="aligndata quick start",
                           description="A small Magpie set made offline with SmolLM2-135M-Instruct (the README's main job).",
                           license="apache-2.0")
    assert rendered == (EXAMPLE / "README.md").read_text()
    data = DatasetCard(rendered).data.to_dict()
    assert data["license"] == "apache-2.0" and data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"] and data["configs"][0]["data_files"][0]["split"] == "train"
    assert "| filtered | 3f2a9c1e0b7d4a65 | 23 | 16 | response_complete: 7 |" in rendered and "@inproceedings{xu2025magpie" in rendered


def test_a_planted_token_reaches_no_file_of_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", PLANTED)
    spec = EngineSpec.make("fake", "secret-model", options={"api_key": PLANTED, "note": f"token {PLANTED}",
                                                            "script": {"<|im_start|>assistant\n": "An answer."}})
    magpie_job(tmp_path, n=4, seed=0, engine=spec, shard_size=2)
    texts = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert (tmp_path / "export" / "README.md") in texts and (tmp_path / "manifest.jsonl") in texts
    leaks = [str(p) for p, data in texts.items() if PLANTED.encode() in data]
    assert leaks == []
    assert "***" in (tmp_path / "instructions" / "stage.json").read_text()
    card_text = (tmp_path / "export" / "README.md").read_text()
    assert "- Magpie pre-query prefix: template (from the model's chat template)" in card_text
    assert "## Filters" in card_text and "| filtered | instruction_complete, instruction_length(max_chars=2000, min_chars=10)" in card_text
    # a resumed run still recognises its stages (stage.json is compared redacted)
    magpie_job(tmp_path, n=4, seed=0, engine=spec, shard_size=2)


def test_card_links_only_papers_and_lists_every_model_a_stage_used(tmp_path):
    import re

    from pipeline.recipes import run_step, write_input
    from pipeline.recipes.steps import Step

    data = tmp_path / "in.jsonl"
    data.write_text('{"instruction": "Explain rain.", "output": "Water falls."}\n')
    judge = EngineSpec.make("fake", "judge-model", options={"script": {"Rating": "7"}})
    base = EngineSpec.make("fake", "base-model")
    stage = run_step(tmp_path, Step("rewarded", "pipeline.score.reward:reward_difference", {},
                                    engines={"base": base.to_json()}), write_input(tmp_path, data), engine=judge)
    from pipeline.recipes import export_parquet

    export_parquet(tmp_path, stage, card="Rewards")
    text = (tmp_path / "export" / "README.md").read_text()
    assert "| rewarded | fake | judge-model |" in text and "| rewarded (base) | fake | base-model |" in text
    links = re.findall(r"\]\((http[^)]+)\)", text + (EXAMPLE / "README.md").read_text())
    assert links and all(url in card.PAPERS.values() for url in links) and "pypi.org" not in text
