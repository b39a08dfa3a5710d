import json

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.cli.commands import app

runner = CliRunner()


def test_unknown_engine_lists_the_valid_ones(tmp_path):
    result = runner.invoke(app, ["magpie", "--out", str(tmp_path), "--engine", "ollama"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # a usage error, not a traceback
    assert "'ollama' is not one of 'llamacpp', 'openai', 'openai-chat', 'anthropic', 'vllm'" in " ".join(result.output.replace("│", " ").split())


@pytest.mark.real_llm
@pytest.mark.vllm
def test_magpie_command_on_the_offline_default_model_and_resume(tmp_path):
    args = ["magpie", "--out", str(tmp_path), "--n", "4", "--shard-size", "2", "--response-max-tokens", "64",
            "--response-temperature", "0.6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    df = pl.read_parquet(tmp_path / "export" / "data.parquet")
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert {e["stage"] for e in manifest} == {"instructions", "instructions-filtered", "responses", "filtered", "export"}
    assert all(e["engine"]["backend"] == "vllm" for e in manifest if e["stage"] in ("instructions", "responses"))
    assert df.height == sum(e["rows_out"] for e in manifest if e["stage"] == "filtered")
    # run again: every shard is finished, so nothing new is computed, the export is identical and not logged again
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.exception is None
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == len(manifest)
    assert pl.read_parquet(tmp_path / "export" / "data.parquet").equals(df)


def test_the_library_never_imports_prefect():
    import subprocess
    import sys

    from pathlib import Path

    root = Path(__file__).parent.parent
    modules = [".".join(p.relative_to(root).with_suffix("").parts) for p in (root / "pipeline").rglob("*.py")
               if p.stem not in ("__init__", "__main__")]
    assert len(modules) > 20
    script = f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint(sorted(m for m in sys.modules if m.startswith('prefect')))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


BAD_FILES = {"cut.json": b'[{"instruction": "a", "output": "b"}, {"instru', "latin1.jsonl": b'{"instruction": "caf\xe9"}\n',
             "table.csv": b"a,b\n", "broken.parquet": b"PAR1 not really", "empty.jsonl": b"\n", "missing.jsonl": None}
INPUT_COMMANDS = [["curate", "--input"], ["tag", "--input"], ["magpie-filter", "--input"], ["magpie-dpo", "--input"],
                  ["magpie-extend", "--input"], ["mcts", "--seeds"], ["codeclm", "--seeds"], ["export", "--input"],
                  ["select", "--k", "1", "--input"]]


@pytest.mark.parametrize("command", INPUT_COMMANDS, ids=lambda c: c[0])
def test_every_input_command_answers_a_bad_file_with_one_line_naming_it(tmp_path, command):
    table = []
    for name, content in BAD_FILES.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        out = tmp_path / f"out-{name}" / ("selected.parquet" if command[0] == "select" else "")
        result = runner.invoke(app, [*command, str(path), "--out", str(out)])
        table.append((name, result.exit_code, result.output.strip()))
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert name in result.output and isinstance(result.exception, SystemExit), (name, result.output, result.exception)
        assert len(result.output.strip().splitlines()) <= 3, result.output  # one message, wrapped at most
    print("\n".join(f"{command[0]} {name}: exit {code}: {text}" for name, code, text in table))


ENGINE_COMMANDS = ["magpie", "curate", "tag", "magpie-dpo", "magpie-extend", "mcts", "codeclm"]


@pytest.mark.parametrize("command", ENGINE_COMMANDS)
def test_every_engine_command_takes_the_same_engine_options(command):
    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    options = {opt for param in click_command.params for opt in param.opts}
    assert {"--engine", "--model", "--base-url", "--template", "--option", "--api-key-env"} <= options


def test_openai_without_a_template_is_one_line_not_a_traceback(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Explain rain.", "output": "Water falls."}\n')
    result = runner.invoke(app, ["curate", "--input", str(data), "--out", str(tmp_path / "run"), "--engine", "openai",
                                 "--base-url", "http://127.0.0.1:9/v1", "--model", "meta-llama/Llama-3-8B",
                                 "--dedup", "", "--k", "1"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "no OpenAI-compatible server answers at http://127.0.0.1:9/v1" in " ".join(result.output.split())


def test_a_model_that_will_not_load_is_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model")
    result = runner.invoke(app, ["magpie", "--out", str(tmp_path / "run"), "--n", "2", "--engine", "llamacpp",
                                 "--model", str(bad)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "the llamacpp engine could not start" in " ".join(result.output.split()) and "broken.gguf" in result.output


def test_every_command_that_runs_a_model_takes_a_shard_size():
    from typer.main import get_command

    from flows.cli import app

    commands = get_command(app).commands
    engine_commands = {name for name, command in commands.items() if "engine" in {p.name for p in command.params}}
    assert {"magpie", "curate", "tag", "mcts", "codeclm", "magpie-dpo", "magpie-extend"} <= engine_commands
    assert all("shard_size" in {p.name for p in commands[name].params} for name in engine_commands | {"run"})
