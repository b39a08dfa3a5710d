"""What a command shows: our progress and the stage summary on the terminal; everything else (third-party
logs, warnings, progress bars, native libraries' prints) in DIR/run.log. `aligndata --verbose ...` shows it all.

The redirection is at the file-descriptor level, because vLLM, Triton, llama.cpp and torch write to fd 1 and 2
from native code and from logging handlers made before we could configure them. Our console writes to a copy of
the terminal's stderr taken first.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape

RUN_LOG = "run.log"
settings = {"verbose": False}  # set by the app's --verbose option


@contextmanager
def third_party_output_to_log(run_dir: Path, console: Console):
    """Send fd 1 and 2 to DIR/run.log for the duration, `console` to the terminal; restore both after (so an
    unexpected traceback still reaches the terminal)."""
    if settings["verbose"]:
        with notices_on(console):
            yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    previous = console.file
    # Where the console wrote to fd 2, it now writes to a copy of the terminal's; a console already writing
    # elsewhere (a test's captured stream) keeps doing so.
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1) if _writes_to_fd(previous, 2) else None
    with open(run_dir / RUN_LOG, "a") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} aligndata {' '.join(sys.argv[1:])}\n")
        log.flush()
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
    if terminal:
        console.file = terminal
    try:
        with notices_on(console):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        if terminal:
            console.file = previous
            terminal.close()


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"[yellow]{record.levelname.lower()}:[/yellow] {escape(record.getMessage())}", soft_wrap=True,
                           highlight=False)


@contextmanager
def notices_on(console: Console):
    """The library's notices (the `aligndata` logger: a lost replica, a capped replica count) on `console`, not in
    the log file."""
    logger = logging.getLogger("aligndata")
    handler, propagate, level = _ConsoleHandler(console), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level


def _last_line(path: Path, tail: int = 8192) -> str:
    """The file's last complete line, reading only its end (a manifest grows with every shard)."""
    with open(path, "rb") as handle:
        handle.seek(max(handle.seek(0, os.SEEK_END) - tail, 0))
        lines = handle.read().decode(errors="replace").splitlines()
    if not lines:
        raise ValueError("empty")
    return lines[-1]


def _writes_to_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def manifest_status(run_dir: Path, console: Console, what: str):
    """A status line that follows the run's manifest (the latest finished shard) while a flow runs."""
    manifest = Path(run_dir) / "manifest.jsonl"
    stop = threading.Event()
    with console.status(what) as status:
        def follow():
            while not stop.wait(0.5):
                try:
                    last = json.loads(_last_line(manifest))
                except (OSError, ValueError):
                    continue
                shard = f" shard {last['shard'] + 1}" if "shard" in last else ""
                status.update(f"{what}: {last.get('stage')}{shard} done ({last.get('rows_out', '?')} rows)")

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
