"""`aligndata plan COMMAND OPTIONS...`: run a job on a sample in a scratch directory and print what the full job is
predicted to make and cost, per stage (pipeline.recipes.plan)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import typer
from typer._click import ClickException  # Typer's own Click, which its commands raise

from pipeline.cli.common import app, console, fail

SOURCES = ("--input", "--seeds")  # the options that name a job's data; magpie's source is --n


def _without_out(args: list[str]) -> list[str]:
    """The command line without its --out (the plan writes to its scratch directory)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return kept


def _source_rows(params: dict) -> int:
    """How many rows the full job's source has: magpie's --n, or the rows of its --input / --seeds."""
    from pipeline.core.readers import read_batches

    for name in ("input", "seeds"):
        if params.get(name):
            return sum(len(batch.rows) for batch in read_batches(Path(params[name])))
    return int(params["n"])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def plan(ctx: typer.Context,
         command: str = typer.Argument(..., help="The command to plan (magpie, curate, tag, ...), then its options."),
         shards: int = typer.Option(2, "--plan-shards", min=1, help="Shards of the job's source the sample runs."),
         plan_dir: Optional[Path] = typer.Option(None, "--plan-dir", help="Where the sample runs (default: a "
                                                                           "temporary directory, kept to inspect)."),
         save: Optional[Path] = typer.Option(None, "--save", help="Also write the prediction as JSON here.")) -> None:
    """Predict a job before running it: the job runs on its first `--plan-shards` shards in a scratch directory, and
    each stage's measured keep ratio, tokens, seconds and cost per row are scaled to the full input (selections keep
    their k). Example: aligndata plan curate --input my.jsonl --engine openai-chat --model gpt-4o-mini --k 6000."""
    from pipeline.core.inputs import SAMPLE_ROWS
    from pipeline.recipes.plan import plan_of

    group = ctx.parent.command
    target = group.get_command(ctx.parent, command) if hasattr(group, "get_command") else None
    if target is None or command in ("plan", "run", "batches", "corpus"):
        raise fail(ValueError(f"cannot plan {command!r}: plan a job command (magpie, curate, tag, ...)"))
    args = _without_out(list(ctx.args))
    try:
        params = target.make_context(command, [*args, "--out", "plan"], resilient_parsing=True).params
    except ClickException as exc:
        raise fail(ValueError(f"{command}: {exc.format_message()}")) from None
    full = _source_rows(params)
    sample = shards * int(params.get("shard_size") or 32)
    scratch = plan_dir or Path(tempfile.mkdtemp(prefix="aligndata-plan-"))
    console.print(f"planning {command} on {min(sample, full)} of {full} rows in {scratch} ...", soft_wrap=True)
    token = SAMPLE_ROWS.set(sample)
    try:
        code = group.main(args=[command, *args, "--out", str(scratch)], standalone_mode=False, prog_name="aligndata")
    except ClickException as exc:
        raise fail(ValueError(f"{command}: {exc.format_message()}")) from None
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 1))
    finally:
        SAMPLE_ROWS.reset(token)
    if code:  # the sample run failed: its message is above
        raise typer.Exit(code)
    predicted = plan_of(scratch, full)
    console.print(f"\npredicted for {full} rows:", soft_wrap=True)
    for p in predicted:
        cost = "-" if p["cost_usd"] is None else f"${p['cost_usd']:.4f}"
        console.print(f"{p['stage']:>16}  {p['rows_in']:>8} → {p['rows_out']:<8} tokens {p['prompt_tokens']:>10} in "
                      f"{p['completion_tokens']:>9} out  {p['seconds']:>9.1f} s  {cost}", soft_wrap=True, highlight=False)
    costs = [p["cost_usd"] for p in predicted if p["cost_usd"] is not None]
    console.print(f"{'total':>16}  {sum(p['seconds'] for p in predicted):.0f} s, "
                  f"${sum(costs):.4f}{' (some models have no price)' if len(costs) < sum(bool(p['prompt_tokens']) for p in predicted) else ''}",
                  soft_wrap=True, highlight=False)
    result = {"command": [command, *args], "source_rows": full, "sample_rows": min(sample, full), "stages": predicted}
    (scratch / "plan.json").write_text(json.dumps(result, indent=1))
    if save:
        Path(save).write_text(json.dumps(result, indent=1))
