"""A quiet console: our progress and summary on the terminal, third-party output (native prints to fd 1 and 2,
Python warnings, library logs) in DIR/run.log; `--verbose` shows everything."""
import subprocess
import sys

SCRIPT = """
import logging, os, sys, warnings
import typer
from pipeline.cli import output
from pipeline.cli.commands import app, console

@app.command()
def noisy(out: str = typer.Option(...)):
    with output.third_party_output_to_log(out, console):
        os.write(2, b"native stderr noise\\n")
        os.write(1, b"native stdout noise\\n")
        warnings.warn("a library's FutureWarning")
        logging.getLogger("vllm").warning("a library's log line")
        console.print("our summary line")
    console.print("after the run")

app()
"""


def run(tmp_path, *flags):
    return subprocess.run([sys.executable, "-c", SCRIPT, *flags, "noisy", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)


def test_third_party_output_goes_to_run_log_and_ours_to_the_terminal(tmp_path):
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    assert "our summary line" in terminal and "after the run" in terminal
    assert "noise" not in terminal and "Warning" not in terminal and "log line" not in terminal
    log = (tmp_path / "run" / "run.log").read_text()
    assert all(text in log for text in ("native stderr noise", "native stdout noise", "FutureWarning", "log line"))
    assert "our summary line" not in log


def test_verbose_shows_everything(tmp_path):
    done = run(tmp_path, "--verbose")
    terminal = done.stdout + done.stderr
    assert done.returncode == 0 and "native stderr noise" in terminal and "our summary line" in terminal
    assert not (tmp_path / "run" / "run.log").exists()
