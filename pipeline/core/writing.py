"""Writing a run directory safely: files appear whole or not at all (write_atomic), a write the file system refuses
is one WriteError naming the place and the fix (a full disk, no permission, a read-only disk), and one command writes
a run directory at a time (writer_lock).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable


class WriteError(OSError):
    """The run directory cannot be written (a full disk, no permission, a read-only file system); the message names
    the place and what to do. Everything finished before it is kept."""


HINTS = {errno.ENOSPC: "free space on that disk, or copy the run directory to one with room, and run the same command "
                       "again: finished shards are kept",
         errno.EDQUOT: "the disk quota is used up: free some, or use a run directory elsewhere, and run the same command "
                       "again: finished shards are kept",
         errno.EACCES: "this user may not write there: fix the permissions or choose another --out",
         errno.EPERM: "this user may not write there: fix the permissions or choose another --out",
         errno.EROFS: "the file system is read-only: choose an --out on a writable disk"}


def write_failure(exc: OSError, path: Path) -> WriteError:
    """A WriteError naming `path`'s directory and the fix, for an OSError that a write raised (Arrow's carry the
    errno only in their text)."""
    code = exc.errno
    if code is None:
        text = str(exc)
        code = next((c for c in HINTS if os.strerror(c) in text), None)
    why = os.strerror(code) if code else (str(exc).splitlines() or [type(exc).__name__])[0]
    hint = HINTS.get(code, "check the disk and the permissions, then run the same command again: finished shards are kept")
    return WriteError(code or 0, f"cannot write in {Path(path).parent}: {why}; {hint}")


def write_atomic(path: Path, write, before_rename: Callable[[Path], None] | None = None) -> Path:
    """Call `write(tmp_path)`, fsync, `before_rename(tmp_path)` (e.g. the manifest line of a shard), then rename onto
    `path`: readers see the whole file or none. An OSError of the file system is a WriteError naming the place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except WriteError:
        raise
    except OSError as exc:
        raise write_failure(exc, path) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


LOCK = ".aligndata.lock"
_HELD: dict[str, tuple[int, int]] = {}  # run directory -> (lock file descriptor, depth): re-entrant in a process


class RunDirBusy(RuntimeError):
    """Another command is writing the run directory; the message names it."""


@contextlib.contextmanager
def writer_lock(run_dir: Path, *, wait: bool = False, on_wait: Callable[[str], None] | None = None):
    """Hold DIR/.aligndata.lock for the duration: one command writes a run directory at a time. Another command on
    it is refused (RunDirBusy naming its pid, host and command), or with `wait` waits for it (`on_wait(message)`
    first). An flock: the lock of a process that died is gone with it, so a stale lock is simply taken over.
    Re-entrant within a process (a flow and its subflows)."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_failure(exc, run_dir / LOCK) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            message = f"{run_dir} is being written by {holder}"
            if not wait:
                raise RunDirBusy(f"{message}: wait for it to finish (or pass --wait), or use another --out") from None
            if on_wait:
                on_wait(f"{message}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(['aligndata', *sys.argv[1:]])[:300]}, "
                      f"since {time.strftime('%Y-%m-%dT%H:%M:%S%z')})\n".encode(), 0)
        _HELD[key] = (fd, 1)
        try:
            yield
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
