"""`aligndata feedback`, `bleuberi`, `audit`, `honesty` and `moi`: commands over data users already have."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (API_KEY_ENV, BASE_URL, ENGINE, MODEL, NO_PII, OPTION, SALVAGE, STRICT, TEMPLATE, Backend,
                                 app, choice, console, engine_spec, fail, pii_drop_option, run_job, shard_size_option)
from pipeline.select.bleuberi import MODES
from pipeline.synth.honesty import MATCHERS, METHODS

Mode, Method, Matcher = choice(MODES), choice(METHODS), choice(MATCHERS)


@app.command()
def feedback(
    input: Path = typer.Option(..., help="Multi-turn chat logs (any format curate reads: messages, ShareGPT, ...)."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    max_tokens: int = typer.Option(1024, help="Length of the preferred responses."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(32),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
    no_pii: bool = NO_PII,
    pii_drop: str = pii_drop_option(),
) -> None:
    """WildFeedback (arXiv 2408.15549): classify each user follow-up as SAT/DSAT/NEITHER, extract what dissatisfied
    users want, and build preference pairs (rejected = the answer that dissatisfied, chosen = one written to the
    preference, which the pair's prompt does not keep); trainer-ready with `aligndata export --format trl`. Personal
    data is redacted from every turn first, before the model sees it (--no-pii to skip, --pii-drop to drop rows)."""
    run_job("feedback_job", out, input_path=input, engine=engine_spec(engine, model, base_url, template, option, api_key_env),
            strict=strict, salvage=salvage, max_tokens=max_tokens, shard_size=shard_size, pii=not no_pii,
            pii_drop=tuple(t for t in pii_drop.split(",") if t))


@app.command()
def bleuberi(
    input: Path = typer.Option(..., help="Prompts with references (any format curate reads; the gold answer is a reference)."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    k: int = typer.Option(..., help="Prompts to select."),
    mode: Mode = typer.Option("hard", help="hard (lowest BLEU: the paper's), easy, medium or random."),
    references_column: Optional[str] = typer.Option(None, help="The input field holding the reference(s) (a string or a "
                                                               "list); default: each row's gold answer."),
    max_tokens: int = typer.Option(512, help="The policy's answer length (the paper's GRPO runs: 512)."),
    seed: int = typer.Option(0, help="Seed of the random mode."),
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
    """BLEUBERI (arXiv 2505.11080): the policy model (--model) answers every prompt, BLEU against the references scores
    it, and the mode's k prompts are kept; train on them with pipeline.score.bleu.reward_function() as GRPO's reward."""
    run_job("bleuberi_job", out, input_path=input, engine=engine_spec(engine, model, base_url, template, option, api_key_env),
            strict=strict, salvage=salvage, k=k, mode=mode, references_column=references_column, max_tokens=max_tokens,
            seed=seed, shard_size=shard_size)


@app.command()
def audit(
    against: Path = typer.Option(..., help="The reference set: the suspected training data or an eval set (any format curate reads)."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    input: Optional[Path] = typer.Option(None, help="The dataset to audit (any format curate reads)."),
    n: int = typer.Option(0, help="With --model: sample this many Magpie-style generations from the model's pre-query "
                                  "prefix and audit them (the paper's extraction experiment)."),
    seed: int = typer.Option(0),
    threshold: float = typer.Option(0.95, help="Embedding cosine counted as semantic overlap (the paper's 0.95)."),
    engine: Backend = ENGINE,
    model: Optional[str] = typer.Option(None, help="The model to extract from (with --n)."),
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(32),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """Overlap audit (arXiv 2510.18554): per row, the max embedding cosine to --against (and its nearest row), the max
    normalized Indel similarity and the n-gram overlap; counts by meaning and by string in DIR/audit.json, histograms
    in DIR/report/index.html."""
    from pipeline.ship import report as reports

    spec = engine_spec(engine, model, base_url, template, option, api_key_env) if model else None
    if (input is None) == (spec is None or n <= 0):
        raise fail(ValueError("pass --input DATA, or --model M with --n N (generations to sample), to audit against --against"))
    run_job("audit_job", out, against=against, input_path=input, engine=spec, n=n, seed=seed, threshold=threshold,
            strict=strict, salvage=salvage, shard_size=shard_size)
    counts = json.loads((out / "audit.json").read_text())
    console.print(f"audit: {counts['semantic_overlap']} of {counts['rows']} rows overlap by meaning (cosine >= "
                  f"{counts['threshold']}), {counts['string_overlap']} by string; report: {reports.write(out)}", soft_wrap=True)


@app.command()
def honesty(
    input: Path = typer.Option(..., help="Questions with gold answers (any format curate reads; the gold answer is the "
                                         "row's answer unless --answers-column names a field of aliases)."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    method: Method = typer.Option("absolute", help="absolute, confidence-num, confidence-verb or multisample."),
    m: int = typer.Option(10, help="Sampled answers per question (T = 1), besides the greedy one."),
    answers_column: Optional[str] = typer.Option(None, help="The input field with the gold answer(s) (a string or a list)."),
    matcher: Matcher = typer.Option("contains", help="contains (a normalized gold answer in the answer: TriviaQA's) or exact."),
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
    """Alignment for Honesty (arXiv 2312.07000): SFT data that answers what the model knows and says "I don't know"
    for what it does not, from its greedy and sampled answers labeled against the gold answers."""
    run_job("honesty_job", out, input_path=input, engine=engine_spec(engine, model, base_url, template, option, api_key_env),
            strict=strict, salvage=salvage, method=method, m=m, answers_column=answers_column, matcher=matcher,
            shard_size=shard_size)


@app.command()
def moi(
    input: Path = typer.Option(..., help="Rows with domains: Magpie's task_category (aligndata tag) or a `category` field."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    system_prompts: Path = typer.Option(..., help='JSON file {"<domain>": "<system prompt>", "*": "<for other domains>"}.'),
    max_tokens: int = typer.Option(2048, help="Length limit of a packed sample."),
    quota: list[str] = typer.Option([], help="DOMAIN=N: at most N rows of a domain (repeatable)."),
    tokenizer: Optional[str] = typer.Option(None, help="HF tokenizer to count tokens with (default: characters / 4)."),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """Mixture-of-Instructions (arXiv 2404.18410): pack instructions from different domains, each under its domain's
    system prompt, into multi-turn samples of at most --max-tokens; export with `aligndata export --format trl`."""
    try:
        prompts = json.loads(system_prompts.read_text())
        quotas = {k: int(v) for k, _, v in (q.partition("=") for q in quota)}
        if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
            raise ValueError("not an object of strings")
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise fail(ValueError(f"{system_prompts}: {exc}; give a JSON object of system prompts, and quotas as DOMAIN=N"))
    run_job("moi_job", out, input_path=input, system_prompts=prompts, max_tokens=max_tokens, quotas=quotas or None,
            tokenizer=tokenizer, strict=strict, salvage=salvage)
