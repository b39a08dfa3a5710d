"""What a stage's code is, as a hash: the identity and cache key of every stage include it.

`code_hash(function)` hashes the source of the function's module and of every module of this project it
imports, transitively (read from the import statements, including imports inside functions). Module
granularity is deliberate: a stage's behaviour depends on its helpers, prompts and constants, which live
beside it, and on shared code it calls (records, engines, filters). A change to any of them changes the hash,
so the runner refuses to mix old and new shards in a run directory and the flow cache recomputes the stage;
code a stage does not import (the CLI, the report, another method) does not. Data files a module reads are not
hashed (their content is part of the stage's parameters or its module's constants).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

PROJECT_PACKAGES = ("pipeline", "filters")


def _is_ours(name: str) -> bool:
    return name.split(".")[0] in PROJECT_PACKAGES


@lru_cache(maxsize=None)
def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _imports(name: str, source: str) -> set[str]:
    """Project modules named by the import statements of module `name` (with each parent package)."""
    package = name if _module_file(name) and _module_file(name).name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module`
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if _is_ours(m) and _module_file(m)}


@lru_cache(maxsize=None)
def module_closure(name: str) -> tuple[str, ...]:
    """Module `name` and every project module it imports, transitively, sorted."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or not _module_file(current):
            continue
        seen.add(current)
        todo.extend(_imports(current, _module_file(current).read_text()))
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def _module_digest(name: str) -> str:
    return hashlib.sha256(_module_file(name).read_bytes()).hexdigest()


def code_hash(function) -> str:
    """16 hex digits identifying the code of `function`: its module and the project modules they import."""
    digest = hashlib.sha256()
    for name in module_closure(function.__module__):
        digest.update(f"{name}\0{_module_digest(name)}\n".encode())
    return digest.hexdigest()[:16]
