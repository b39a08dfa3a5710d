"""The command line as a whole, walked from its Click tree: every option that takes a fixed set of values refuses a
bad one with a usage error (exit 2, no traceback) that names the option and lists the valid values, before any work;
every command's --help works; a missing engine package is one line saying what to install."""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from flows.cli import app
from pipeline.engines import BACKENDS

runner = CliRunner()
ROOT = typer.main.get_command(app)


def walk(command=ROOT, path: tuple[str, ...] = ()):
    """(path, command) for the app, its groups (corpus) and every command under them."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


def choices_of(param) -> tuple[str, ...] | None:
    """What a parameter takes: a choice's values, a comma-list option's items (its callback's .choices), or None."""
    descriptor = param.type_descriptor
    if descriptor.is_choice:
        return tuple(str(c) for c in descriptor.choices)
    return getattr(param.callback, "choices", None)


COMMANDS = list(walk())
CHOICE_OPTIONS = [(path, command, param) for path, command in COMMANDS for param in command.params
                  if choices_of(param) is not None]


def label(path, param) -> str:
    return " ".join(("aligndata", *path, param.opts[0]))


def squash(text: str) -> str:
    """The output without Rich's box and any whitespace, so a message wrapped anywhere still matches."""
    return re.sub(r"[\s│╭╮╰╯─]", "", text)


def harmless(param, tmp_path: Path) -> str:
    """A value that passes a required parameter's type check (the command never runs: the bad value stops it)."""
    annotation = param.type_descriptor.annotation
    if choices_of(param):
        return choices_of(param)[0]
    if annotation is int:
        return "1"
    if annotation is float:
        return "0.5"
    if annotation is Path and param.name == "out":
        return str(tmp_path / "out")
    if annotation is Path:
        data = tmp_path / "data.jsonl"
        data.write_text(json.dumps({"instruction": "Explain rain.", "output": "Water falls."}) + "\n")
        return str(data)
    return "x"


def required_args(command, tmp_path: Path, skip) -> list[str]:
    args, positional = [], []
    for param in command.params:
        if param.required and param is not skip:
            value = harmless(param, tmp_path)
            if param.param_type_name == "argument":
                positional.append(value)
            else:
                args += [param.opts[0], value]
    return positional + args


def test_the_walk_sees_every_command_and_the_known_choices():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"magpie", "curate", "tag", "magpie-filter", "run", "corpus", "corpus add", "corpus publish"} <= names
    options = {label(path, param) for path, _, param in CHOICE_OPTIONS}
    assert {"aligndata curate --selector", "aligndata curate --dedup", "aligndata curate --format",
            "aligndata magpie --profile", "aligndata magpie --task", "aligndata magpie --response-mode",
            "aligndata tag --tags", "aligndata magpie-filter --preset", "aligndata run --engine",
            "aligndata corpus add --field", "aligndata export --format"} <= options
    print("\n".join(f"{label(path, param)}: {', '.join(choices_of(param))}" for path, _, param in CHOICE_OPTIONS))


@pytest.mark.parametrize("path, command, param", CHOICE_OPTIONS, ids=[label(p, o) for p, _, o in CHOICE_OPTIONS])
def test_a_bad_value_is_a_usage_error_listing_the_valid_ones(tmp_path, path, command, param):
    valid = choices_of(param)
    bad = "bogus" if param.type_descriptor.is_choice else f"{valid[0]},bogus"  # a comma list checks every item
    if getattr(command, "commands", None):  # a group's own option: parsed before the subcommand's --help
        args = [*path, param.opts[0], bad, next(iter(command.commands)), "--help"]
    else:
        args = [*path, *required_args(command, tmp_path, skip=param), param.opts[0], bad]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.output, result.exception)
    text = squash(result.output)
    assert "Invalidvaluefor" in text and squash(param.opts[0]) in text, result.output  # names the option
    assert all(squash(value) in text for value in valid), result.output  # lists what it takes
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize("path, command, param", CHOICE_OPTIONS, ids=[label(p, o) for p, _, o in CHOICE_OPTIONS])
def test_every_default_is_one_of_the_choices(path, command, param):
    if param.type_descriptor.is_choice:
        assert param.default is None or param.default in choices_of(param)
    else:
        assert set(filter(None, param.default.split(","))) <= set(choices_of(param))  # a comma list's items


def test_engine_is_a_choice_of_the_real_backends_everywhere():
    backends = tuple(name for name in BACKENDS if name != "fake")
    engines = [(path, param) for path, command in COMMANDS for param in command.params if param.name == "engine"]
    assert len(engines) >= 15
    assert all(choices_of(param) == backends for _, param in engines), [(p, choices_of(o)) for p, o in engines]


# Plain-text options whose help reads like alternatives, but that take other values too.
FREE_FORM = {
    "aligndata --ray": "'local' or a Ray cluster address",
    "aligndata run --ray": "'local' or a Ray cluster address",
    "aligndata curate --embedder": "minilm, deita[:<causal LM>] or any sentence-transformers name or path",
    "aligndata tag --embedder": "minilm, deita[:<causal LM>] or any sentence-transformers name or path",
    "aligndata guide-align --embedder": "minilm or any sentence-transformers name or path",
}
# How this CLI's help lists a fixed set of values: "a (...), b (...) or c", "a, b or c", "...: a, b, c."
WORD, NOTE = r"[a-z][\w-]*", r"( \([^)]*\))"
ALTERNATIVES = re.compile(rf"\b{WORD}{NOTE}(, {WORD}{NOTE}?)*,? or {WORD}\b|\b{WORD}(, {WORD})+,? or {WORD}\b|"
                          rf": {WORD}(, {WORD})+\.")


def alternatives_in(help_text: str) -> bool:
    """Whether a help text lists values the way a choice's does.

    >>> [alternatives_in(h) for h in ("chat (the template) or urial (URIAL).", "hard, easy, medium or random.",
    ...  "Prompts: math, code, translation.", "Model path or served name.", "The field (a string or a list).",
    ...  "Chat template source (.gguf or a key)")]
    [True, True, True, False, False, False]
    """
    return ALTERNATIVES.search(help_text) is not None


def test_no_plain_text_option_reads_like_a_choice():
    """An option added later as a plain str whose help lists alternatives ('a, b or c') fails here: make it a
    choice (pipeline.cli.common.choice) or a comma list (comma_list), or add it to FREE_FORM with why."""
    suspects = {label(path, param): param.help for path, command in COMMANDS for param in command.params
                if param.type_descriptor.annotation is str and choices_of(param) is None
                and param.param_type_name == "option" and alternatives_in(param.help or "")}
    comma = {label(path, param): param.help for path, command in COMMANDS for param in command.params
             if "comma list" in (param.help or "") and choices_of(param) is None}
    assert set(suspects) - set(FREE_FORM) == set() and comma == {}, (suspects, comma)
    assert set(FREE_FORM) <= {label(path, param) for path, command in COMMANDS for param in command.params}


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda p: " ".join(("aligndata", *p)))
def test_help_never_raises(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and result.exception is None, (result.output, result.exception)
    assert "Usage" in result.output


@pytest.mark.parametrize("backend, package", [("vllm", "vllm"), ("llamacpp", "llama_cpp")])
def test_a_missing_engine_package_is_one_line_with_the_install_command(tmp_path, monkeypatch, backend, package):
    import pipeline.engines as engines

    real = importlib.import_module

    def import_module(name, *args, **kwargs):
        if name == BACKENDS[backend][0]:
            raise ImportError(f"No module named {package!r}", name=package)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_module)
    monkeypatch.setattr(engines, "_ENGINES", {})  # an engine this process already loaded is not reused
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Explain rain."}]}) + "\n")
    result = runner.invoke(app, ["urial", "--input", str(data), "--out", str(tmp_path / "run"), "--engine", backend,
                                 "--model", "any-model"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    text = " ".join(result.output.split())
    assert f"engine {backend!r} needs a package that is missing ({package})" in text, result.output
    install = " ".join(BACKENDS[backend][2].split())  # e.g. pip install 'aligndata[cpu]', brackets and all
    assert install in text and len(result.output.strip().splitlines()) <= 3, result.output
