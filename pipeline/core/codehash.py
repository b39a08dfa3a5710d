"""What a stage's code is, as a hash: the identity and cache key of every stage include it.

`code_hash(function)` hashes the source of the function's module and of every module of this project it
imports, transitively (read from the import statements, including imports inside functions), and the data
files of every package those modules are in. Module granularity is deliberate: a stage's behaviour depends on
its helpers, prompts and constants, which live beside it, and on shared code it calls (records, engines,
filters). A change to any of them changes the hash, so the runner refuses to mix old and new shards in a run
directory and the flow cache recomputes the stage; code a stage does not import (the CLI, the report, another
method) does not.

Data files follow the same rule, at package granularity: every file in a package's folder or in its non-package
subfolders (`pipeline/synth/data/principles.json`, read by MCTS) that is not a Python module belongs to the
package, and is hashed into each stage whose closure holds one of the package's modules. Nothing is declared per
stage and no source is searched for file names, which a computed name, a glob or a new reader would silently
escape: a file shipped in a package is covered by every stage with a module in that package (the price: editing
MCTS's principles also recomputes Magpie, which lives beside it). A module reading another package's data without
importing it would escape; tests/test_codehash.py checks no module does. Files outside the packages are not
covered; the only ones the project reads are the dataset card templates in data_cards/, written at export and
never cached. Only this project's packages count: the folder of a user's own stage module may hold anything, and
what it reads is the user's to put in the stage's parameters.

A user's stage (a recipe's `mypkg.stages:my_filter`, or a module beside the recipe) is hashed the same way: its
module, the modules of ours it imports, and the user's own modules it imports, transitively: those under the folder
its top-level package (or module) lies in, unless that folder is an installed site (site-packages, the Python
installation), whose libraries are versioned by their installs, not hashed.
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


def _package_of(name: str) -> str:
    """The package module `name` is in (itself for a package)."""
    return name if _module_file(name).name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, source: str) -> set[str]:
    """Project modules named by the import statements of module `name` (with each parent package), and the user's
    own modules when `name` is one (_user_root)."""
    package = _package_of(name)
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
    root = _user_root(name)
    return {m for m in found if (_is_ours(m) or (root and _under(m, root))) and _module_file(m)}


@lru_cache(maxsize=None)
def _installed_sites() -> tuple[Path, ...]:
    import site
    import sys
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"],
             *site.getsitepackages(), site.getusersitepackages()}
    return tuple(Path(p).resolve() for p in paths if p)


@lru_cache(maxsize=None)
def _user_root(name: str) -> Path | None:
    """The folder holding the top-level package or module of `name`, when `name` is a user's module there (not ours,
    not in an installed site); None otherwise."""
    top = name.split(".")[0]
    if _is_ours(top) or not _module_file(top):
        return None
    file = _module_file(top).resolve()
    root = file.parent.parent if file.name == "__init__.py" else file.parent
    sites = _installed_sites()
    return None if any(root == s or s in root.parents for s in sites) else root


def _under(module: str, root: Path) -> bool:
    """Whether `module` is a user's module under `root` (a virtual environment inside it is an installed site). Its
    top-level package is looked at first: finding a submodule imports its package, which for a library is costly."""
    for name in dict.fromkeys((module.split(".")[0], module)):
        file = _module_file(name)
        parents = file.resolve().parents if file else ()
        if root not in parents or any(site in parents for site in _installed_sites()):
            return False
    return True


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


def _package_dir(package: str) -> Path:
    """The folder of `package` (tests point it at a copy)."""
    return _module_file(package).parent


def _is_noise(name: str) -> bool:
    """Caches, hidden files and editor backups: present or not, they change nothing a stage reads."""
    return name == "__pycache__" or name.startswith((".", "#")) or name.endswith(("~", ".pyc"))


def _data_files(folder: Path, top: bool) -> list[Path]:
    found = []
    for entry in sorted(folder.iterdir()):
        if _is_noise(entry.name):
            continue
        if entry.is_dir():
            if not (entry / "__init__.py").exists():  # a subpackage's files are its own
                found += _data_files(entry, top=False)
        elif entry.is_file() and not (top and entry.suffix == ".py"):  # the package's modules are hashed as modules
            found.append(entry)
    return found


@lru_cache(maxsize=None)
def package_data(package: str) -> tuple[tuple[str, str], ...]:
    """(path relative to the package folder, sha256) of each data file of `package`, sorted by path."""
    root = _package_dir(package)
    return tuple((path.relative_to(root).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest())
                 for path in _data_files(root, top=True))


def clear_caches() -> None:
    """Forget what was read (tests that rewrite modules or data files call it)."""
    for cached in (_module_file, module_closure, _module_digest, package_data, _user_root):
        cached.cache_clear()


def code_hash(function) -> str:
    """16 hex digits identifying the code of `function`: its module, the project modules they import and the
    data files of their packages."""
    digest = hashlib.sha256()
    modules = module_closure(function.__module__)
    for name in modules:
        digest.update(f"{name}\0{_module_digest(name)}\n".encode())
    packages = {_package_of(name) for name in modules}
    for package in sorted(p for p in packages if _is_ours(p)):  # a user's folder may hold anything, of any size
        for path, sha in package_data(package):  # no data files: the hash stays what it was
            digest.update(f"{package}/{path}\0{sha}\n".encode())
    return digest.hexdigest()[:16]
