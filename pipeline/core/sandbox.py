"""Run untrusted Python (a model's solution with a problem's tests; a user's tool with a model's arguments) in a
subprocess with limits: wall-clock and CPU time, address space, file size, no core dumps, and no network.

Our own small runner rather than a maintained one: the maintained sandboxes need a daemon or a privileged install
(epicbox and SandboxFusion run Docker; firejail, bubblewrap and nsjail are system packages CI may lack), while this
needs only the standard library and util-linux's `unshare`. Network: the child runs in a new network namespace
(`unshare --net`, as root or through a user namespace) where only a downed loopback exists, and, always, an audit
hook (PEP 578) that refuses every socket connect, bind and send and marks the run `network` even if the code
catches the error. Where `unshare` is missing the audit hook stands alone (`isolation()` says which; cards name it).
Memory: RLIMIT_AS, so an allocation past it is a MemoryError (`memory`). Time: RLIMIT_CPU and a wall-clock
timeout that kills the process group (`timeout`). Not a defence against a determined attacker with a kernel
exploit; it keeps honest mistakes of generated code (loops, huge lists, stray requests) from the host.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

STATUSES = ("ok", "error", "timeout", "memory", "network")
OUTPUT_CHARS = 4_000  # of stdout and stderr kept per run

# Runs in the child before the code: the audit hook, then the code with its errors classified. The result goes to a
# file of its own (stdout is the program's).
BOOTSTRAP = r'''
import json, sys
RESULT = sys.argv[1]
state = {"network": False}
def _audit(event, args):
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"):
        state["network"] = True
        raise PermissionError("network access is disabled in the sandbox")
sys.addaudithook(_audit)
def _finish(status, error=""):
    if state["network"]:
        status = "network"
    with open(RESULT, "w") as out:
        json.dump({"status": status, "error": error[-2000:]}, out)
try:
    source = open(sys.argv[2]).read()
    sys.argv = sys.argv[2:]
    exec(compile(source, "<sandboxed>", "exec"), {"__name__": "__main__"})
except MemoryError:
    _finish("memory", "MemoryError")
except SystemExit as exc:
    _finish("ok" if exc.code in (None, 0) else "error", f"SystemExit({exc.code!r})")
except BaseException as exc:
    import traceback
    _finish("error", "".join(traceback.format_exception_only(type(exc), exc)).strip())
else:
    _finish("ok")
'''


@dataclass(frozen=True)
class Limits:
    """What one run may use: wall-clock seconds, address space in MiB (Python itself takes ~30), and file size."""

    seconds: float = 10.0
    memory_mb: int = 512
    file_mb: int = 16


@dataclass(frozen=True)
class Outcome:
    """How a run ended (`status`, one of STATUSES), the program's stdout and stderr (tails) and the error line."""

    status: str
    stdout: str = ""
    stderr: str = ""
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def isolation() -> str:
    """How the network is cut here: "netns" (unshare as root), "userns+netns" (unshare through a user namespace)
    or "audit-hook" (no unshare: the child's audit hook alone)."""
    unshare = shutil.which("unshare")
    if unshare:
        for flags, name in ((["--net"], "netns"), (["--map-root-user", "--net"], "userns+netns")):
            try:
                if subprocess.run([unshare, *flags, "true"], capture_output=True, timeout=10).returncode == 0:
                    return name
            except (OSError, subprocess.SubprocessError):
                pass
    return "audit-hook"


def _command() -> list[str]:
    prefix = {"netns": ["--net"], "userns+netns": ["--map-root-user", "--net"]}.get(isolation())
    return [shutil.which("unshare"), *prefix] if prefix else []


def _limit(limits: Limits):
    def apply() -> None:  # in the child, before exec
        cpu = max(1, int(limits.seconds + 1))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        memory = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_python(code: str, *, stdin: str | None = None, limits: Limits = Limits(), python_path: tuple[str, ...] = ()) -> Outcome:
    """Run `code` as a Python program in a fresh temporary directory under `limits`, with `stdin`; never raises for
    what the code does. `python_path` is put on the child's sys.path (a user's tool module)."""
    with tempfile.TemporaryDirectory(prefix="aligndata-sandbox-") as tmp:
        program, result = Path(tmp) / "program.py", Path(tmp) / "result.json"
        program.write_text(code)
        bootstrap = Path(tmp) / "bootstrap.py"
        bootstrap.write_text(BOOTSTRAP)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(python_path)}
        command = [*_command(), sys.executable, "-B", str(bootstrap), str(result), str(program)]
        process = subprocess.Popen(command, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
                                   preexec_fn=_limit(limits))
        try:
            stdout, stderr = process.communicate(stdin or "", timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return Outcome("timeout", stdout[-OUTPUT_CHARS:], stderr[-OUTPUT_CHARS:], f"wall-clock limit {limits.seconds} s")
        try:
            os.killpg(process.pid, signal.SIGKILL)  # children it left behind
        except ProcessLookupError:
            pass
        stdout, stderr = stdout[-OUTPUT_CHARS:], stderr[-OUTPUT_CHARS:]
        if result.exists():
            try:
                found = json.loads(result.read_text())
                return Outcome(found["status"], stdout, stderr, found.get("error", ""))
            except (ValueError, KeyError):
                pass
        if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return Outcome("timeout", stdout, stderr, f"CPU limit ({process.returncode})")
        if "MemoryError" in stderr or process.returncode == -signal.SIGSEGV:  # an allocation that failed in C
            return Outcome("memory", stdout, stderr, f"exit {process.returncode}")
        return Outcome("error", stdout, stderr, f"exit {process.returncode}: {stderr.strip()[-300:]}")


def run_many(programs: list[tuple[str, str | None]], *, limits: Limits = Limits(), python_path: tuple[str, ...] = (),
             workers: int | None = None) -> list[Outcome]:
    """run_python over (code, stdin) pairs, `workers` at a time (default: the CPUs), in order."""
    if not programs:
        return []
    workers = workers or max(1, min(len(programs), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run_python(p[0], stdin=p[1], limits=limits, python_path=python_path), programs))
