"""Self-test of the installed llama.cpp build: `python -m pipeline.engines.selftest` (install.sh ends with it).

Checks what broke on AMX CPUs: a multi-token Magpie pre-query prompt through the in-process engine (its
worker process) and through `llama_cpp.server` with the `--engine openai` path, plus the build's
instruction sets (no AMX kernels compiled in). Prints one line per check; exits 1 with what failed and
how to rebuild.
"""
from __future__ import annotations

import re
import sys
import time

from pipeline.engines import Engine, EngineSpec, EngineUnavailable, Sampling, load_engine
from pipeline.engines.llamacpp import REBUILD_HINT
TOKENS = 64


def compiled_features(system_info: str) -> set[str]:
    """The CPU features a llama.cpp build was compiled with, from `llama_print_system_info()`.

    >>> sorted(compiled_features("CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 0 | REPACK = 1 |"))
    ['AVX2', 'REPACK', 'SSE3']
    """
    return {name for name, value in re.findall(r"(\w+) = (\d+)", system_info) if value != "0"}


def magpie_tokens_per_second(engine: Engine) -> float:
    """Sample one Magpie instruction from the model's pre-query prefix (with SmolLM2's default system turn, a
    multi-token prompt: the path that crashed) and time it."""
    started = time.perf_counter()
    prompt = engine.template.user_prefix()
    [[completion]] = engine.generate([prompt], Sampling(temperature=1.0, max_tokens=TOKENS), seeds=[0])
    if completion.failed:
        raise RuntimeError(completion.error)
    return completion.n_tokens / (time.perf_counter() - started)


def main() -> int:
    from pipeline.engines.llamacpp_server import LlamaServer

    failures = []
    try:
        engine = load_engine(EngineSpec.make("llamacpp"))
        features = compiled_features(engine.system_info)
        amx = sorted(f for f in features if f.startswith("AMX"))
        print(f"llama.cpp build: {' '.join(sorted(f for f in features if f.startswith(('AVX', 'FMA', 'F16C', 'AMX'))))}")
        if amx:
            failures.append(f"the build has AMX kernels compiled in ({', '.join(amx)}), which crash on multi-token prompts")
        print(f"in-process engine: Magpie prompt OK, {magpie_tokens_per_second(engine):.1f} tok/s")
    except (EngineUnavailable, RuntimeError) as exc:
        failures.append(f"in-process engine: {exc}")
    try:
        with LlamaServer() as server:
            served = load_engine(EngineSpec.make("openai", base_url=server.url))
            print(f"llama_cpp.server + --engine openai: Magpie prompt OK, {magpie_tokens_per_second(served):.1f} tok/s")
    except (EngineUnavailable, RuntimeError, TimeoutError) as exc:
        failures.append(f"llama_cpp.server: {exc}")
    for failure in failures:
        print(f"self-test FAILED: {failure}", file=sys.stderr)
    if failures:
        print(f"To fix: {REBUILD_HINT}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
