"""The layout is the architecture: pipeline's subpackages import only the layers before them, no module
imports another in a cycle, filters/ imports nothing from pipeline, and every module says what it holds."""
import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# In import order: each layer may import itself and the layers before it (pipeline/__init__.py says why).
LAYERS = ("core", "engines", "score", "synth", "select", "ship", "recipes", "cli")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package in ("pipeline", "filters"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports, at the top or inside a function (both are dependencies)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "pipeline" or len(parts) == 1 else parts[1]


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ importing its own submodules is how packages work; everything else counts
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in edges.items()}
    graphlib.TopologicalSorter(edges).prepare()  # raises CycleError naming the cycle


def test_each_layer_imports_only_the_layers_before_it():
    allowed = {name: set(LAYERS[:i + 1]) for i, name in enumerate(LAYERS)}
    wrong = []
    for module, deps in graph().items():
        here = layer(module)
        for dep in deps:
            there = layer(dep)
            if here == "filters" and there != "filters":
                wrong.append(f"{module} imports {dep}: filters/ must not import pipeline")
            elif here in allowed and there in LAYERS and there not in allowed[here]:
                wrong.append(f"{module} ({here}) imports {dep} ({there})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_opens_with_a_docstring_and_stays_small(module):
    path = modules()[module]
    if path.name == "__main__.py":
        return
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path} is over {MAX_LINES} lines: split it by idea"
