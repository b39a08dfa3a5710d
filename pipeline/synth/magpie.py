"""Magpie self-synthesis (Xu et al., 2024; arXiv 2406.08464): an aligned chat model given only the
part of its chat template before the user's text writes a user instruction; then it answers.

Stages (each a plain function over a record frame, one batched engine call per shard):
    plan(n, seed)        -> n empty records to fill (ids and per-row seeds depend only on seed and index)
    synthesize(df, ...)  -> the user instruction (pre-query prefix, stop strings, optional sanitizer)
    respond(df, ...)     -> the assistant's reply through the chat template
    extend(df, ...)      -> more turns: follow-up instructions under the official multi-turn system prompt

Families in `chat.OFFICIAL` use the official pinned prefix, stops and sampling defaults; any other
model's prefix and stops are derived from its own chat template (for SmolLM2 that includes its default
system turn, without which it mostly writes code or junk).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import polars as pl

from pipeline.engines.templates import OFFICIAL, TASK_SYSTEM_PROMPTS, family_of, registry_agrees
from pipeline.engines import Completion, Engine, Sampling, raw_text_template, reply_to, urial
from pipeline.synth.magpie_logits import default_processor, sampling_fields
from pipeline.synth.magpie_sanitizer import sanitize_instruction
from pipeline.core.rundir import StageWarning
from pipeline.core.records import dump_meta, empty, meta_dicts, messages_of, record_id

TASKS = tuple(TASK_SYSTEM_PROMPTS)
# Official multi-turn system prompt (exp/gen_mt.py), typos included ("Al", "thorough,relevant").
MT_SYSTEM_PROMPT = ("You are a helpful Al assistant. The user will engage in a multi-round conversation with you, asking "
                    "initial questions and following up with additional related questions. Your goal is to provide "
                    "thorough,relevant and insightful responses to help the user with their queries.")
# Models without an official entry: the small-model setting of the official scripts (Qwen2.5-3B/7B: T=0.7).
DERIVED_INSTRUCTION_TEMPERATURE = 0.7
# The official scripts' lengths (exp/gen_ins.py, exp/gen_res.py) for models without a pinned one.
PAPER_INSTRUCTION_MAX_TOKENS = 2048
PAPER_RESPONSE_MAX_TOKENS = 4096
RESPONSE_MODES = ("chat", "urial")


@dataclass(frozen=True)
class PreQuery:
    """What instruction sampling sends: the prefix, the stop strings and how to clean the result."""

    prefix: str
    stop: tuple[str, ...]
    family: str | None
    temperature: float
    top_p: float
    max_tokens: int
    sanitize: bool
    origin: str  # "official:<family>[:<task>]" or "template" (the model's chat template)


def pre_query(engine: Engine, *, task: str | None = None, system: str | None = None,
              early_stopping: bool | None = None) -> PreQuery:
    """The Magpie pre-query prompt for `engine`'s model; `task` picks an official task system prompt."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown Magpie task {task!r}; valid: {list(TASKS)}")
    template = raw_text_template(engine, "Magpie's pre-query instruction prompt")
    family = family_of(engine.model_name) or family_of(engine.spec.model)
    official = OFFICIAL.get(family) if system is None else None
    if official and not registry_agrees(official.pre_query_template, template):
        warnings.warn(f"the Magpie registry's {family!r} prefix {official.pre_query_template!r} does not match the "
                      f"model's chat template ({template.user_prefix()!r}): using the template's", StageWarning,
                      stacklevel=2)
        official, family = None, None
    if official and (task is None or task in official.task_templates):
        prefix = official.task_templates[task] if task else official.pre_query_template
        stop = official.stop_tokens + official.stop_tokens_assistant
        temperature, top_p, early = official.instruction_temperature, official.instruction_top_p, official.early_stopping
        max_tokens = official.instruction_max_tokens
        origin = f"official:{family}" + (f":{task}" if task else "")
    else:
        system_text = system if system is not None else TASK_SYSTEM_PROMPTS.get(task)
        history = [{"role": "system", "content": system_text}] if system_text else []
        prefix = template.user_prefix(history)
        stop = tuple(template.stop_strings())
        temperature, top_p, early, origin = DERIVED_INSTRUCTION_TEMPERATURE, 1.0, True, "template"
        max_tokens = PAPER_INSTRUCTION_MAX_TOKENS
    if task == "translation":
        early = False  # the official scripts disable early stopping for translation
    if early_stopping is not None:
        early = early_stopping
    return PreQuery(prefix=prefix, stop=stop + (("\n",) if early else ()), family=family, temperature=temperature,
                    top_p=top_p, max_tokens=max_tokens, sanitize=bool(official and official.sanitize), origin=origin)


def plan(n: int, *, seed: int) -> pl.DataFrame:
    """`n` empty Magpie records; record i's id and sampling seed depend only on (seed, i)."""
    ids = [record_id("magpie", seed, i) for i in range(n)]
    metas = [{"magpie": {"seed": seed, "index": i, "row_seed": int(rid[:8], 16)}} for i, rid in enumerate(ids)]
    frame = pl.DataFrame({"id": ids, "source": ["magpie"] * n, "messages": [[] for _ in range(n)]},
                         schema_overrides={"messages": empty().schema["messages"]})
    return frame.with_columns(dump_meta(metas))


def _row_seeds(metas: list[dict], turn: int, role: str) -> list[int]:
    offset = {"user": 0, "assistant": 1}[role]
    return [(m["magpie"]["row_seed"] + 1_000_003 * (2 * turn + offset)) % 2**31 for m in metas]


def _provenance(engine: Engine, sampling: Sampling, completion: Completion, seed: int, **extra) -> dict:
    return {"engine": engine.spec.backend, "model": engine.model_name, "sampling": sampling.as_dict(), "seed": seed,
            "finish_reason": completion.finish_reason, "n_tokens": completion.n_tokens, **extra}


def _drop_reasons(completions: list[Completion]) -> pl.Series:
    return pl.Series("drop_reason", [f"engine_error:{c.error_kind}" if c.failed else None for c in completions],
                     dtype=pl.String)


def synthesize(df: pl.DataFrame, *, engine: Engine, task: str | None = None, system: str | None = None,
               temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None,
               early_stopping: bool | None = None, sanitize: bool | None = None,
               logits_processor: str | None = None) -> pl.DataFrame:
    """Sample one user instruction per row from the pre-query prefix; one engine call for the frame.

    Sampling settings left None are the model family's official ones (pre_query), else the official scripts'
    defaults (T = DERIVED_INSTRUCTION_TEMPERATURE for models without an entry, PAPER_INSTRUCTION_MAX_TOKENS).
    `logits_processor` ("none", "de-markdown", "flaming-tokens"; None: the official one for the model, see
    magpie_logits) acts on the first generated token, on the vLLM and llama.cpp engines.

    Rows whose request failed keep their messages empty and get `drop_reason = "engine_error:<kind>"`.
    """
    if df.is_empty():
        return df
    query = pre_query(engine, task=task, system=system, early_stopping=early_stopping)
    processor = logits_processor or default_processor(f"{engine.spec.model} {engine.model_name}")  # name or path
    if processor != "none" and not getattr(engine, "supports_logits_processors", False):
        warnings.warn(f"the {engine.spec.backend} engine cannot apply Magpie's {processor!r} logits processor: "
                      "instructions are sampled without it", StageWarning, stacklevel=2)
    sampling = Sampling(**sampling_fields(processor), temperature=query.temperature if temperature is None else temperature,
                        top_p=query.top_p if top_p is None else top_p,
                        max_tokens=query.max_tokens if max_tokens is None else max_tokens, stop=query.stop)
    metas = meta_dicts(df)
    seeds = _row_seeds(metas, 1, "user")
    completions = [c[0] for c in engine.generate([query.prefix] * df.height, sampling, seeds)]
    do_sanitize = query.sanitize if sanitize is None else sanitize
    messages = []
    for meta, completion, seed in zip(metas, completions, seeds):
        raw = completion.text.strip() if completion.text is not None else None
        text, cls = sanitize_instruction(raw, query.family) if (do_sanitize and raw) else (raw, None)
        meta["magpie"]["turns"] = [{"user": _provenance(engine, sampling, completion, seed, raw=raw, sanitize_class=cls,
                                                         pre_query=query.origin, task=task, error=completion.error)}]
        messages.append([] if text is None else [{"role": "user", "content": text}])
    return df.with_columns(pl.Series("messages", messages, dtype=df.schema["messages"]), dump_meta(metas),
                           _drop_reasons(completions))


def respond(df: pl.DataFrame, *, engine: Engine, temperature: float | None = None, top_p: float | None = None,
            max_tokens: int | None = None, mode: str = "chat") -> pl.DataFrame:
    """Append the assistant's reply to each conversation ending in a user turn. Settings left None are the model
    family's official response sampling (e.g. Llama-3.1: T 0.6, top_p 0.9), else the paper's greedy decoding, and
    PAPER_RESPONSE_MAX_TOKENS. `mode`: "chat" (the model's chat template) or "urial" (a base model answering through
    URIAL's in-context prompt, for 1 and more turns; pipeline/engines/urial.py)."""
    if mode not in RESPONSE_MODES:
        raise ValueError(f"unknown response mode {mode!r}; valid: {list(RESPONSE_MODES)}")
    if df.is_empty():
        return df
    conversations = messages_of(df)
    if any(not c or c[-1]["role"] != "user" for c in conversations):
        bad = next(i for i, c in enumerate(conversations) if not c or c[-1]["role"] != "user")
        raise ValueError(f"respond: row {bad} (id={df['id'][bad]!r}) does not end with a user turn")
    official = OFFICIAL.get(family_of(engine.model_name) or family_of(engine.spec.model))
    sampling = Sampling(temperature=(official.response_temperature if official else 0.0) if temperature is None else temperature,
                        top_p=(official.response_top_p if official else 1.0) if top_p is None else top_p,
                        max_tokens=PAPER_RESPONSE_MAX_TOKENS if max_tokens is None else max_tokens,
                        stop=urial.STOP if mode == "urial" else ())  # a chat's engine adds its template's stops
    metas = meta_dicts(df)
    turn = [sum(m["role"] == "user" for m in c) for c in conversations]
    seeds = [s for t, meta in zip(turn, metas) for s in _row_seeds([meta], t, "assistant")]
    if mode == "urial":
        raw_text_template(engine, "URIAL's in-context prompt")
    prompts = [urial.render(c) if mode == "urial" else reply_to(c) for c in conversations]
    completions = [c[0] for c in engine.generate(prompts, sampling, seeds)]
    for conversation, meta, completion, seed, t in zip(conversations, metas, completions, seeds, turn):
        turns = meta.setdefault("magpie", {}).setdefault("turns", [])
        while len(turns) < t:
            turns.append({})
        turns[t - 1]["assistant"] = _provenance(engine, sampling, completion, seed, error=completion.error, mode=mode)
        if completion.text is not None:
            text = urial.answer(completion.text) if mode == "urial" else completion.text.strip()
            conversation.append({"role": "assistant", "content": text})
    return df.with_columns(pl.Series("messages", conversations, dtype=df.schema["messages"]), dump_meta(metas),
                           _drop_reasons(completions))


def follow_up(df: pl.DataFrame, *, engine: Engine, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int | None = None,
              early_stopping: bool | None = None, system: str = MT_SYSTEM_PROMPT) -> pl.DataFrame:
    """Append a follow-up user instruction to each finished conversation (Magpie's multi-turn step 1).

    The prompt is the conversation under the multi-turn system prompt, cut where the next user's text starts.
    """
    if df.is_empty():
        return df
    conversations = messages_of(df)
    template = raw_text_template(engine, "Magpie's multi-turn pre-query prompt")
    family = family_of(engine.model_name) or family_of(engine.spec.model)
    official = OFFICIAL.get(family)
    stop = tuple(official.stop_tokens) if official else tuple(template.stop_strings())
    early = (official.early_stopping if official else True) if early_stopping is None else early_stopping
    max_tokens = (official.instruction_max_tokens if official else PAPER_INSTRUCTION_MAX_TOKENS) if max_tokens is None else max_tokens
    sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop + (("\n",) if early else ()))
    metas = meta_dicts(df)
    turn = [sum(m["role"] == "user" for m in c) + 1 for c in conversations]
    seeds = [s for t, meta in zip(turn, metas) for s in _row_seeds([meta], t, "user")]
    prompts = [template.user_prefix([{"role": "system", "content": system}] + [m for m in c if m["role"] != "system"])
               for c in conversations]
    completions = [c[0] for c in engine.generate(prompts, sampling, seeds)]
    for conversation, meta, completion, seed in zip(conversations, metas, completions, seeds):
        text = completion.text.strip() if completion.text is not None else None
        meta.setdefault("magpie", {}).setdefault("turns", []).append(
            {"user": _provenance(engine, sampling, completion, seed, raw=text, pre_query="multi-turn", error=completion.error)})
        if text is not None:
            conversation.append({"role": "user", "content": text})
    return df.with_columns(pl.Series("messages", conversations, dtype=df.schema["messages"]), dump_meta(metas),
                           _drop_reasons(completions))
