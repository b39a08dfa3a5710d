"""`aligndata urial`, `isheep` and `guide-align`: self-alignment jobs where the model writes its own data (and guidelines)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (API_KEY_ENV, BASE_URL, ENGINE, MODEL, OPTION, SALVAGE, STRICT, TEMPLATE, Backend, app,
                                 console, engine_spec, fail, run_job, shard_size_option)


@app.command()
def isheep(
    out: Path = typer.Option(..., help="Run directory (re-run to resume): OUT/iter-N per iteration, OUT/isheep.json."),
    n: int = typer.Option(64, help="New tasks asked for per iteration (the reference asks for 10,000)."),
    iterations: int = typer.Option(2, help="Generate → self-assess → train rounds (1.8B-14B models plateau after ~2)."),
    seeds: Optional[Path] = typer.Option(None, help="Seed tasks (any format curate reads; default: 16 bundled tasks)."),
    seed: int = typer.Option(0, help="Seed of the plan and of every request."),
    min_score: int = typer.Option(9, help="Keep pairs the model rated at least this for both quality and following "
                                          "(the reference keeps > 8)."),
    max_tokens: int = typer.Option(1024, help="Length of a new task and of an answer (the reference's 1024)."),
    train_steps: int = typer.Option(-1, help="Cap the LoRA SFT steps per iteration (-1: 2 epochs, the reference's)."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(32),
) -> None:
    """I-SHEEP (arXiv 2408.08072): the model self-instructs new tasks from seed tasks, answers them, rates each pair
    twice (quality; instruction following), keeps the pairs it rates highly, and is LoRA-trained from the base model on
    them; the next iteration generates with the trained model. Later iterations load an HF checkpoint: --engine vllm."""
    from functools import partial

    from pipeline.ship.train import LoraSettings, lora_sft

    try:
        run_job("isheep_job", out, n=n, seed=seed, iterations=iterations, seeds=seeds, min_score=min_score,
                max_tokens=max_tokens, shard_size=shard_size, train=partial(lora_sft, settings=LoraSettings(max_steps=train_steps)),
                engine=engine_spec(engine, model, base_url, template, option, api_key_env))
    except ValueError as exc:  # no rows survived to train on; llama.cpp asked for later iterations
        raise fail(exc) from exc
    for it in json.loads((out / "isheep.json").read_text())["iterations"]:
        console.print(f"iteration {it['iteration']}: {it['assessed']} assessed → {it['kept']} kept; mean self-scores "
                      f"(quality, following) assessed {tuple(it['assessed_mean'].values())}, kept "
                      f"{tuple(it['kept_mean'].values())}; trained {it['trained']}", soft_wrap=True)


@app.command("guide-align")
def guide_align(
    input: Path = typer.Option(..., help="Inputs to answer (any format curate reads; the first user turn is the input)."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    library: Optional[Path] = typer.Option(None, help="A guideline library from an earlier run (its "
                                                      "export/guidelines.parquet); default: write one from these inputs."),
    k: int = typer.Option(3, help="Guidelines retrieved per input."),
    per_input: int = typer.Option(3, help="Guidelines the model writes per input when it builds the library."),
    threshold: float = typer.Option(0.9, help="Embedding cosine above which a guideline repeats an earlier one."),
    embedder: str = typer.Option("minilm", help="Embeds guidelines and inputs for dedup and retrieval (minilm or a "
                                                "sentence-transformers name or path)."),
    max_tokens: int = typer.Option(1024, help="Length of a guided answer."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(32),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """Guide-Align (arXiv 2403.11838): the model writes guidelines for each input, deduplicated by embedding into a
    library (export/guidelines.parquet, reusable with --library); each input is then answered with its top-k
    guidelines in the system prompt, and kept as (input, guided answer) for SFT."""
    run_job("guide_align_job", out, input_path=input, library=library, k=k, per_input=per_input, threshold=threshold,
            embedder=embedder, max_tokens=max_tokens, shard_size=shard_size, strict=strict, salvage=salvage,
            engine=engine_spec(engine, model, base_url, template, option, api_key_env))


@app.command()
def urial(
    input: Path = typer.Option(..., help="Conversations to answer (any format curate reads); each is cut after its last "
                                         "user turn and that turn is answered."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    max_tokens: int = typer.Option(1024, help="Length of an answer."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(32),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """URIAL (arXiv 2312.01552): a base model (--model) answers each conversation through URIAL's in-context prompt
    (three stylistic examples, `# Query:` / `# Answer:`), greedily; no chat template or fine-tuning needed."""
    run_job("urial_job", out, input_path=input, max_tokens=max_tokens, shard_size=shard_size, strict=strict,
            salvage=salvage, engine=engine_spec(engine, model, base_url, template, option, api_key_env))
