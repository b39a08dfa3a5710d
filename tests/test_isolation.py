"""The suite's own crash isolation: a test that dies with SIGSEGV (a native engine, faiss, torch) fails alone,
and the tests after it still run and report (pytest-xdist runs the tests in a worker it replaces when it dies;
`-n 1` is in pyproject's addopts)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_segfaulting_test_fails_alone_and_the_rest_still_run(tmp_path):
    (tmp_path / "test_crash.py").write_text(
        "import os, signal\n\n"
        "def test_dies_with_sigsegv():\n    os.kill(os.getpid(), signal.SIGSEGV)\n\n"
        "def test_runs_after_the_crash():\n    assert 1 + 1 == 2\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                           "-p", "no:cacheprovider", "-o", "testpaths=", str(tmp_path / "test_crash.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "1 failed, 1 passed" in done.stdout, done.stdout[-2000:]
    assert "test_dies_with_sigsegv" in done.stdout and "crashed" in done.stdout
