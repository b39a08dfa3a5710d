"""The `aligndata` command line. Every stage command writes shards and a manifest into --out the same way;
re-running a command on the same --out resumes it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from filters.magpie import DIFFICULTY_LEVELS
from pipeline.cli.common import (ALLOW_UNSCRUBBED, API_KEY_ENV, BASE_URL, ENGINE, INPUT_HELP, hoist_global_options, MODEL,
                                 NO_PII, OPTION, SALVAGE, STRICT, TEMPLATE, EMBEDDER, Backend, app, choice, comma_list,
                                 console, engine_spec, fail, pii_drop_option, role, run_job, shard_size_option)
from pipeline.cli import mining, plan, reasoning, selfalign  # noqa: F401  (registers their commands)
from pipeline.cli.batches import batches
from pipeline.cli.corpus import corpus_app
from pipeline.cli.recipe import recipe_app
from pipeline.core.inputs import FORMATS as INPUT_FORMATS
from pipeline.recipes import DEDUP_METHODS, SELECTORS
from pipeline.recipes.magpie import PROFILES
from pipeline.score.deita import MODES as SCORE_MODES
from pipeline.score.tags import TAGS
from pipeline.select.magpie_presets import PRESETS
from pipeline.ship.export import FORMATS as EXPORT_FORMATS
from pipeline.synth.codeclm import JUDGE_MODES
from pipeline.synth.magpie import RESPONSE_MODES, TASKS

# The options that take one of a fixed set of values (the library's own lists): a bad value is a usage error.
Task, Profile, ResponseMode = choice(TASKS), choice(PROFILES), choice(RESPONSE_MODES)
Selector, ScoreMode, InputFormat = choice(SELECTORS), choice(SCORE_MODES), choice(INPUT_FORMATS)
Preset, Difficulty, JudgeMode = choice(PRESETS), choice(DIFFICULTY_LEVELS), choice(JUDGE_MODES)
ResponderFormat = choice(("chat", "base"))  # pipeline.synth.mcts checks these two and has no constant for them
ExportFormat = choice(EXPORT_FORMATS)

app.add_typer(corpus_app, name="corpus")
app.add_typer(recipe_app, name="recipe")
app.command("batches")(batches)


@app.command()
def magpie(
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    n: int = typer.Option(32, help="Instructions to sample."),
    seed: int = typer.Option(0, help="Seed; row i's sampling seed depends only on (seed, i)."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    turns: int = typer.Option(1, help="Conversation turns (Magpie multi-turn extension for > 1)."),
    task: Optional[Task] = typer.Option(None, help="Task control via the official system prompts: math, code, translation."),
    system: Optional[str] = typer.Option(None, help="A custom system prompt in the pre-query prefix."),
    profile: Profile = typer.Option("auto", help="Sampling defaults: paper (the official scripts' settings per model family), "
                                             "cpu (short, sampled: for small models on a CPU) or auto (paper for a model "
                                             "of the official registry, else cpu). Options below override it."),
    temperature: Optional[float] = typer.Option(None, help="Instruction temperature (default: per model family)."),
    instruction_max_tokens: Optional[int] = typer.Option(None, help="Default: per profile and family (paper: 2048)."),
    response_temperature: Optional[float] = typer.Option(None, help="Default: per profile and family (paper: greedy; Llama-3.1: 0.6)."),
    response_top_p: Optional[float] = typer.Option(None, help="Default: per profile and family."),
    response_max_tokens: Optional[int] = typer.Option(None, help="Default: per profile (paper: 4096)."),
    response_mode: ResponseMode = typer.Option("chat", help="chat (the model's template) or urial (a base model answering "
                                                   "through URIAL's in-context prompt; --model is then a base model)."),
    responder: Optional[str] = typer.Option(None, help="Who answers the instructions (default: --model): a model on "
                                                       "--engine's backend, or an engine block as JSON, e.g. "
                                                       '\'{"backend": "openai-chat", "model": "gpt-4o-mini", "options": '
                                                       '{"api_key_env": "OPENAI_API_KEY"}}\'.'),
    shard_size: int = shard_size_option(32),
    max_failure_rate: float = typer.Option(0.1, help="Stop when more than this share of a shard fails in the engine."),
) -> None:
    """Magpie self-synthesis: instructions, responses, optional extra turns, basic filters, Parquet export."""
    spec = engine_spec(engine, model, base_url, template, option, api_key_env)
    answering = role(spec, responder)
    run_job("magpie_job", out, n=n, seed=seed, engine=spec, turns=turns, task=task,
            system=system, profile=profile, instruction_temperature=temperature,
            instruction_max_tokens=instruction_max_tokens, response_temperature=response_temperature,
            response_top_p=response_top_p, response_max_tokens=response_max_tokens, response_mode=response_mode,
            responder=answering.to_json() if answering else None, shard_size=shard_size,
            max_failure_rate=max_failure_rate)





@app.command()
def curate(
    input: Path = typer.Option(..., help="Your data: Parquet, JSONL/JSON or an HF datasets directory (messages, ShareGPT or Alpaca)."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    k: int = typer.Option(1000, help="Rows to select."),
    tau: float = typer.Option(0.9, help="Repr Filter: keep a row iff its cosine to every selected row is <= tau."),
    dedup: str = typer.Option(",".join(DEDUP_METHODS), callback=comma_list(DEDUP_METHODS),
                              help=f"Dedup methods: {', '.join(DEDUP_METHODS)} (a comma list; '' for none)."),
    selector: Selector = typer.Option("diverse", help="diverse (deita Repr Filter) or isa (information-theoretic subsampling)."),
    isa_fraction: Optional[float] = typer.Option(None, help="Share of the scored rows ISA keeps (default: --k rows)."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    score_mode: ScoreMode = typer.Option("auto", help="scorer (exact raw deita prompt), judge (as a conversation, the "
                                                       "label line opening the reply) or auto (scorer where the engine "
                                                       "takes raw text, judge on a chat API)."),
    complexity_model: Optional[str] = typer.Option(None, help="A second model for complexity (hkust-nlp/deita-complexity-scorer; --model then scores quality)."),
    fmt: Optional[InputFormat] = typer.Option(None, "--format", help="The input's format: messages (OpenAI), sharegpt, "
                                                                     "alpaca or instructions (seeds; default: detected)."),
    reference: Optional[Path] = typer.Option(None, help="Eval set to decontaminate against (cosine >= 0.95 or 8-gram overlap >= 50%)."),
    quality_filters: bool = typer.Option(True, help="Drop junk before any model call: too few words, repetitive text "
                                                    "(filters.QUALITY, Data-Juicer's definitions)."),
    long_output: bool = typer.Option(False, "--long-output", help="Keep only prompts with one stated output length that "
                                                                 "the response meets (length score >= 80; arXiv 2410.10210)."),
    ifd_max: Optional[float] = typer.Option(None, help="Score IFD (Cherry LLM) with the engine and drop rows above this "
                                                       "(1.0: the instruction does not help predict the answer)."),
    embedder: str = EMBEDDER,
    shard_size: int = shard_size_option(64),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
    no_pii: bool = NO_PII,
    pii_drop: str = pii_drop_option(),
) -> None:
    """deita curation of existing data: PII redaction, dedup, embeddings, complexity x quality scores, diverse
    selection. Personal data is redacted from every turn first, before any model sees it (--no-pii to skip)."""
    spec = engine_spec(engine, model, base_url, template, option, api_key_env)
    run_job("curate_job", out, input_path=input, fmt=fmt, strict=strict, salvage=salvage, engine=spec, k=k, tau=tau,
             dedup=tuple(m for m in dedup.split(",") if m), selector=selector, isa_fraction=isa_fraction,
             score_mode=score_mode, reference=str(reference) if reference else None,
             quality_filters=None if quality_filters else [], long_output=long_output, ifd_max=ifd_max,
             embedder=embedder, shard_size=shard_size, pii=not no_pii, pii_drop=tuple(t for t in pii_drop.split(",") if t),
             complexity_engine=role(spec, complexity_model).describe() if complexity_model else None)




@app.command()
def tag(
    input: Path = typer.Option(..., help=INPUT_HELP),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    tags: str = typer.Option(",".join(TAGS), callback=comma_list(TAGS), help=f"LLM tags to add: {', '.join(TAGS)} (a comma list; '' for none)."),
    language: bool = typer.Option(True, help="Add the instruction's language (lingua)."),
    reward: bool = typer.Option(True, help="Add instruct_reward."),
    reward_model: Optional[str] = typer.Option(None, help="Sequence-classification reward model (GPU); default: the engine as judge."),
    base_model: Optional[str] = typer.Option(None, help="Base model for the reward difference (URIAL-prompted), on --engine's backend."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    embedder: str = EMBEDDER,
    shard_size: int = shard_size_option(64),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """Magpie's tags: input quality, difficulty, task category, language, reward, min-neighbour distance."""
    from pipeline.recipes import tag_steps

    spec = engine_spec(engine, model, base_url, template, option, api_key_env)
    base = role(spec, base_model)
    steps = tag_steps(tags=tuple(t for t in tags.split(",") if t), language=language, reward=reward,
                      reward_model_path=reward_model, base=base, embedder=embedder, shard_size=shard_size)
    run_job("input_job", out, input_path=input, steps=steps, engine=spec, strict=strict, salvage=salvage)


@app.command("magpie-filter")
def magpie_filter(
    input: Path = typer.Option(..., help="Tagged records (the export of `aligndata tag`)."),
    out: Path = typer.Option(..., help="Run directory."),
    preset: Preset = typer.Option("pro", help="air, pro, pro2 ... pro6 (paper Table 5) or notebook (the repository's)."),
    k: int = typer.Option(300_000, help="How many of the longest responses to keep."),
    reward_threshold: Optional[float] = typer.Option(None, help="Replace the preset's reward threshold (paper: -12)."),
    reward_difference_threshold: Optional[float] = typer.Option(None, help="Replace the reward-difference threshold (paper: 0)."),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """Magpie's filter presets; the funnel (drops per filter) is in the manifest."""
    from pipeline.recipes.magpie_tools import magpie_filter_steps

    steps = magpie_filter_steps(preset=preset, k=k, reward_threshold=reward_threshold,
                                reward_difference_threshold=reward_difference_threshold)
    run_job("input_job", out, input_path=input, steps=steps, engine=None, strict=strict, salvage=salvage)


@app.command("magpie-dpo")
def magpie_dpo(
    input: Path = typer.Option(..., help=INPUT_HELP),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    k: int = typer.Option(5, help="Responses sampled per instruction."),
    temperature: float = typer.Option(0.8),
    max_tokens: int = typer.Option(1024),
    reward_model: Optional[str] = typer.Option(None, help="Reward model (GPU); default: the engine as judge."),
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
    """Magpie preference pairs: k responses, best = chosen, worst = rejected."""
    from pipeline.recipes.magpie_tools import magpie_dpo_steps

    steps = magpie_dpo_steps(k=k, temperature=temperature, max_tokens=max_tokens, reward_model_path=reward_model,
                             shard_size=shard_size)
    run_job("input_job", out, input_path=input, steps=steps, strict=strict, salvage=salvage,
             engine=engine_spec(engine, model, base_url, template, option, api_key_env))


@app.command("magpie-extend")
def magpie_extend(
    input: Path = typer.Option(..., help="Tagged, selected records."),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    turns: int = typer.Option(2, help="Total turns per conversation."),
    min_difficulty: Difficulty = typer.Option("medium", help="Extend only instructions at least this difficult ('very easy' for all)."),
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
    """Extend selected difficult instructions to multi-turn conversations (Magpie-MT)."""
    from pipeline.recipes.magpie_tools import magpie_extend_steps

    steps = magpie_extend_steps(turns=turns, min_difficulty=min_difficulty, model=model, shard_size=shard_size)
    run_job("input_job", out, input_path=input, steps=steps, strict=strict, salvage=salvage,
             engine=engine_spec(engine, model, base_url, template, option, api_key_env))


SEEDS_HELP = "Seed instructions: JSONL with an `instruction` field (optional `category`), Parquet, a datasets dir or a run's export."


@app.command()
def mcts(
    seeds: Path = typer.Option(..., help=SEEDS_HELP),
    out: Path = typer.Option(..., help="Run directory (re-run to resume; trees are saved every iteration)."),
    iterations: int = typer.Option(20, help="Expansions per seed tree."),
    exploration: float = typer.Option(1.0, help="UCT exploration constant c (reference scripts: 0.1)."),
    responses: int = typer.Option(3, help="Responses sampled per node for its reward."),
    reward_model: Optional[str] = typer.Option(None, help="Sequence-classification reward model (GPU); default: the engine as judge."),
    optimizer_model: Optional[str] = typer.Option(None, help="Rewriting model (default: --model)."),
    responder_model: Optional[str] = typer.Option(None, help="Responding model (default: --model)."),
    responder_format: ResponderFormat = typer.Option("chat", help="chat (instruct responder) or base (the reference's [User]/[Assistant] template)."),
    engine: Backend = ENGINE,
    model: str = MODEL,
    base_url: Optional[str] = BASE_URL,
    template: Optional[str] = TEMPLATE,
    option: list[str] = OPTION,
    api_key_env: Optional[str] = API_KEY_ENV,
    shard_size: int = shard_size_option(16),
    strict: bool = STRICT,
    salvage: bool = SALVAGE,
) -> None:
    """UltraPrompt-style MCTS instruction search; writes SFT, DPO and step datasets from the trees."""
    spec = engine_spec(engine, model, base_url, template, option, api_key_env)

    run_job("mcts_job", out, input_path=seeds, engine=spec, strict=strict, salvage=salvage, iterations=iterations, exploration=exploration,
             responses=responses, reward_model_path=reward_model, optimizer=role(spec, optimizer_model),
             responder=role(spec, responder_model), responder_format=responder_format, shard_size=shard_size)


@app.command()
def codeclm(
    seeds: Path = typer.Option(..., help=SEEDS_HELP),
    out: Path = typer.Option(..., help="Run directory (re-run to resume)."),
    n_metadata: int = typer.Option(200, help="Metadata pairs after mix-and-match."),
    per_metadata: int = typer.Option(1, help="Basic instructions per metadata."),
    theta: float = typer.Option(3.0, help="Contrastive Filtering gap threshold on the 1-10 scale."),
    max_iterations: int = typer.Option(4, help="Self-Rubrics iterations, counting the basic generation as 1."),
    target_model: Optional[str] = typer.Option(None, help="The target model (default: --model, which only exercises the plumbing)."),
    keep_unresolved: bool = typer.Option(False, help="Keep instructions that never pass, with the strong response."),
    judge_mode: JudgeMode = typer.Option("text", help="text (the paper's 's1 s2' line) or logprobs (expected digit; for small judges)."),
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
    """CodecLM: encode seeds to metadata, decode new instructions, Self-Rubrics, Contrastive Filtering."""
    from pipeline.recipes import codeclm_steps

    spec = engine_spec(engine, model, base_url, template, option, api_key_env)
    target = role(spec, target_model)
    steps = codeclm_steps(n_metadata=n_metadata, per_metadata=per_metadata, theta=theta, max_iterations=max_iterations,
                          target=target, keep_unresolved=keep_unresolved, judge_mode=judge_mode, shard_size=shard_size)
    run_job("input_job", out, input_path=seeds, steps=steps, strict=strict, salvage=salvage, engine=spec)


@app.command("export")
def export_command(
    input: Path = typer.Option(..., help="Records: a run's export/data.parquet or a stage directory."),
    out: Path = typer.Option(..., help="Output directory."),
    format: ExportFormat = typer.Option("trl", help="trl (Parquet), hf (datasets directories), llamafactory (ShareGPT + dataset_info.json) or axolotl."),
    name: str = typer.Option("aligndata", help="Dataset name in LLaMA-Factory's dataset_info.json."),
) -> None:
    """Trainer-ready files: SFT rows as `messages`, preference rows as prompt/chosen/rejected."""
    from pipeline.ship import export
    from pipeline.core.rundir import read_records

    try:
        written = export.export(read_records(input), out, format, name=name)
    except ValueError as exc:
        raise fail(exc) from exc
    for what, path in written.items():
        console.print(f"{what:>12}: {path}", soft_wrap=True)


@app.command()
def select(
    input: Path = typer.Option(..., help="Parquet with `id`, `embedding` and a score column (or `complexity` and `quality`)."),
    out: Path = typer.Option(..., help="Output Parquet: the selected rows, in selection order."),
    k: int = typer.Option(..., help="Rows to select."),
    tau: float = typer.Option(0.9, help="Keep a row iff its cosine to every selected row is <= tau."),
    score: Optional[str] = typer.Option(None, help="Score column (default: deita_score, or complexity x quality)."),
) -> None:
    """deita's Repr Filter on any Parquet: the k best rows by score whose embeddings are not within tau of each other."""
    import polars as pl

    from pipeline.core.rundir import write_atomic
    from pipeline.select.selection import select_table

    try:
        table = pl.read_parquet(input)
        selected = select_table(table, k=k, tau=tau, score=score, where=str(input))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise fail(f"{input}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    except ValueError as exc:
        raise fail(exc) from exc
    write_atomic(out, lambda tmp: selected.write_parquet(tmp))
    console.print(f"selected {selected.height} of {table.height} rows → {out}")


@app.command()
def publish(
    run_dir: Path = typer.Argument(..., help="A run directory with export/data.parquet and export/README.md."),
    repo_id: str = typer.Option(..., "--repo", help="Dataset repository, e.g. my-org/magpie-smollm2."),
    token_env: str = typer.Option("HF_TOKEN", help="Environment variable holding the write token (never pass it on the command line)."),
    private: bool = typer.Option(False, help="Create the repository private."),
    message: Optional[str] = typer.Option(None, help="Commit message."),
    max_shard_mb: float = typer.Option(500, help="Split the data into Parquet files of at most this many MB."),
    allow_unscrubbed: bool = ALLOW_UNSCRUBBED,
) -> None:
    """Push the run's Parquet data, dataset card and manifest to the Hub (HF_ENDPOINT for another server).
    Pushing an unchanged export again makes no new commit. Rows imported from users' data that no PII pass went
    over (a job run with --no-pii) are refused unless --allow-unscrubbed."""
    from pipeline.ship.publish import PublishError, push

    try:
        record = push(run_dir, repo_id, token_env=token_env, private=private, commit_message=message,
                      max_shard_bytes=max(1, int(max_shard_mb * 2**20)), allow_unscrubbed=allow_unscrubbed)
    except PublishError as exc:
        raise fail(exc) from exc
    console.print(f"pushed {len(record['files'])} files to {record['endpoint']} {repo_id} @ {record['commit'][:12]}", soft_wrap=True)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Write RUN_DIR/report/index.html: the funnel, score histograms and selection coverage over embedding clusters."""
    from pipeline.ship import report as reports

    try:
        path = reports.write(run_dir)
    except FileNotFoundError as exc:
        raise fail(exc) from exc
    console.print(f"wrote {path}")


def main() -> None:
    import sys

    app(args=hoist_global_options(sys.argv[1:]))


if __name__ == "__main__":
    main()
