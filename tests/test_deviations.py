"""The README's deviation table is the one the code's constants make."""
from pathlib import Path

from pipeline.recipes import deviations
from pipeline.recipes.magpie import CPU_PROFILE

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_shows_the_table_the_code_makes():
    assert deviations.in_readme(README.read_text()) == deviations.markdown(), \
        "the README's deviation table is stale: python -m pipeline.recipes.deviations --write README.md"


def test_the_table_reads_the_constants_that_run():
    table = deviations.markdown()
    assert f"{CPU_PROFILE['instruction_max_tokens']} / {CPU_PROFILE['response_max_tokens']}" in table
    assert "llama-3.1: de-markdown" in table and len(deviations.rows()) == table.count("\n") - 2
