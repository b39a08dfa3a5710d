"""Function-calling data with APIGen's three checks (Liu et al., APIGen, arXiv 2406.18518; the xLAM data): a model
writes a user query for a few of the user's tools and the calls that answer it, and a row is kept only if
1. format: every call names one of the row's tools and its arguments validate against that tool's JSON schema
   (`jsonschema`, the reference implementation of the spec, with the draft the schema declares);
2. execution: when the user gives Python implementations (`--functions mypkg.tools`), every call runs in the sandbox
   (pipeline.core.sandbox: time, memory, no network) and returns without an error; its result becomes a `tool` turn;
3. semantic: an engine judge says the calls (and their results) answer the query.
Then the model writes the final assistant answer from the results. Stages: `plan` → `generate` → `check_format` →
`execute` → `judge` → `answer`. Drops are named by check: `format:unparseable`, `format:no_calls`,
`format:unknown_tool`, `format:invalid_arguments`, `execution:error` / `timeout` / `memory` / `network`,
`semantic:rejected`, `semantic:unparseable`, and failed requests' `engine_error:<kind>`. Prompts are our wording of
the paper's. The model's calls are data: arguments reach the user's functions as parsed JSON, never as code.
"""
from __future__ import annotations

import json
import random

import polars as pl

from pipeline.core.messages import call_id, tool_calls, tools_by_name
from pipeline.core.records import POLARS_SCHEMA, compact, dump_meta, meta_dicts, messages_of, record_id, seed_of
from pipeline.core.sandbox import Limits, run_many
from pipeline.engines import Engine, Sampling, chat, failure_reason

MODES = ("single", "parallel")
GENERATE = """You write training data for an assistant that calls functions. The functions it can call:
{tools}
{examples}
Write one realistic request a user could send that {what}, and the function calls that answer it. Use only the functions
above, give every required argument a concrete value taken from the request, and keep to the argument types.
Reply with one JSON object: {{"query": "<the user's request>", "calls": [{{"name": "<function>", "arguments": {{...}}}}]}}"""
WHAT = {"single": "needs exactly one function call", "parallel": "needs two or more function calls made at once"}
GENERATED = {"type": "object", "required": ["query", "calls"], "properties": {
    "query": {"type": "string"},
    "calls": {"type": "array", "items": {"type": "object", "required": ["name", "arguments"],
                                         "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}}}}}}
JUDGE = """Check a function-calling example. The user asked:
{query}
The assistant called:
{calls}
{results}Do these calls{and_results} answer the user's request completely and correctly, with arguments that match what the user
said? Reply with one JSON object: {{"thought": "<one sentence>", "passes": true or false}}"""
VERDICT = {"type": "object", "required": ["thought", "passes"],
           "properties": {"thought": {"type": "string"}, "passes": {"type": "boolean"}}}
ANSWER = ("The user asked: {query}\nThe functions returned:\n{results}\nUsing these results, answer the user's request "
          "directly and briefly.")
# What the sandbox runs per row: the user's module, the calls as JSON data, the results as JSON on the last line.
RUNNER = """import importlib, json
module = importlib.import_module({module!r})
results = []
for call in json.loads({calls!r}):
    results.append(getattr(module, call["name"])(**call["arguments"]))
print(json.dumps(results, default=repr))
"""


def plan(tools: list[str], *, n: int, seed: int = 0, examples: list[dict] = (), max_tools: int = 3,
         parallel_share: float = 0.5) -> pl.DataFrame:
    """`n` rows to generate, each with 1..`max_tools` of `tools` drawn for it, its mode (single or parallel calls) and
    up to two seed examples ({"query", "calls"}) that use its tools, all seeded by (seed, row)."""
    if not tools:
        raise ValueError("no tools: give a JSON list of tool schemas")
    rows = {"id": [], "tools": [], "meta": []}
    for i in range(n):
        rng = random.Random(seed_of("tools", seed, i))
        chosen = sorted(rng.sample(range(len(tools)), rng.randint(1, min(max_tools, len(tools)))))
        names = {json.loads(tools[j])["function"]["name"] for j in chosen}
        fitting = [e for e in examples if {c["name"] for c in e["calls"]} <= names] or list(examples)
        mode = "parallel" if rng.random() < parallel_share else "single"
        rows["id"].append(record_id("tools", seed, i))
        rows["tools"].append([tools[j] for j in chosen])
        rows["meta"].append({"tools": {"mode": mode, "examples": rng.sample(fitting, min(2, len(fitting))), "seed": seed}})
    return pl.DataFrame({"id": rows["id"], "source": ["tools"] * n, "messages": [[] for _ in range(n)],
                         "tools": rows["tools"]},
                        schema={"id": pl.String, "source": pl.String, "messages": POLARS_SCHEMA["messages"],
                                "tools": POLARS_SCHEMA["tools"]}).with_columns(dump_meta(rows["meta"]))


def _prompt(tools: list[str], meta: dict) -> str:
    listed = "\n".join(json.dumps(json.loads(t)["function"], ensure_ascii=False) for t in tools)
    examples = "".join(f"Example: {json.dumps(e, ensure_ascii=False)}\n" for e in meta["examples"])
    return GENERATE.format(tools=listed, examples=examples, what=WHAT[meta["mode"]])


def parse_generated(text: str | None) -> dict | None:
    """{"query", "calls"} from a generation (the first JSON object in it), or None when there is none.

    >>> parse_generated('Sure: {"query": "2+3?", "calls": [{"name": "add", "arguments": {"a": 2}}]}')["query"]
    '2+3?'
    """
    if not text or "{" not in text:
        return None
    try:
        found, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
    except json.JSONDecodeError:
        return None
    if not isinstance(found, dict) or not isinstance(found.get("query"), str) or not found["query"].strip():
        return None
    return found if isinstance(found.get("calls"), list) else None


def generate(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 512, temperature: float = 0.7) -> pl.DataFrame:
    """Stage: each row's query and calls, as [user, assistant with tool_calls] (JSON-schema-constrained where the
    engine can); an unreadable generation is dropped as `format:unparseable`, one without calls as `format:no_calls`."""
    metas, ids, tools = meta_dicts(df), df["id"].to_list(), df["tools"].to_list()
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, json_schema=Sampling.schema(GENERATED))
    prompts = [_prompt(t, m["tools"]) for t, m in zip(tools, metas)]
    completions = engine.generate([chat(p) for p in prompts], sampling, [seed_of("tools", rid) % 2**31 for rid in ids])
    messages, reasons = [], []
    for rid, meta, [completion] in zip(ids, metas, completions):
        found = parse_generated(completion.text)
        meta["tools"] |= {"raw": completion.text, "model": engine.model_name, "finish_reason": completion.finish_reason}
        reason = failure_reason([completion]) or (None if found else "format:unparseable")
        calls = []
        if reason is None:
            try:
                calls = tool_calls(found["calls"], ids=(rid,))
            except ValueError:
                reason = "format:invalid_arguments"
            reason = reason or (None if calls else "format:no_calls")
        reasons.append(reason)
        messages.append([{"role": "user", "content": found["query"].strip()},
                         {"role": "assistant", "content": "", "tool_calls": calls}] if found else [])
    return df.with_columns(pl.Series("messages", messages, dtype=POLARS_SCHEMA["messages"]), dump_meta(metas),
                           pl.Series("drop_reason", reasons, dtype=pl.String))


def call_errors(call: dict, tools: dict[str, dict]) -> tuple[str, str] | None:
    """(drop reason, detail) of one OpenAI tool call against the row's tools, or None when it is valid."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    name = call["function"]["name"]
    if name not in tools:
        return "format:unknown_tool", f"{name} is not one of {sorted(tools)}"
    schema = tools[name].get("parameters") or {"type": "object"}
    try:
        arguments = json.loads(call["function"]["arguments"])
        validator = validator_for(schema)(schema)
        error = next(iter(sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))), None)
    except (json.JSONDecodeError, SchemaError) as exc:
        return "format:invalid_arguments", str(exc).splitlines()[0]
    return ("format:invalid_arguments", f"{name}: {error.message}") if error else None


def check_format(df: pl.DataFrame) -> pl.DataFrame:
    """Stage: APIGen's format check: every call of the last assistant turn names a tool of the row and its arguments
    validate against that tool's parameters schema; the first failure is the row's drop reason (detail in meta)."""
    metas, reasons = meta_dicts(df), []
    for conversation, tools, meta in zip(messages_of(df), df["tools"].to_list(), metas):
        calls = [c for m in conversation if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        found = next(filter(None, (call_errors(c, tools_by_name(tools)) for c in calls)), None) if calls \
            else ("format:no_calls", "no tool calls")
        meta.setdefault("tools", {})["format"] = found[1] if found else "ok"
        reasons.append(found[0] if found else None)
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def execute(df: pl.DataFrame, *, functions: str | None = None, python_path: str | None = None, seconds: float = 10.0,
            memory_mb: int = 512, functions_hash: str | None = None) -> pl.DataFrame:
    """Stage: APIGen's execution check: each row's calls run in the sandbox against the user's module `functions`
    (importable from `python_path`); their results become tool turns; a run that fails drops the row as
    `execution:<error|timeout|memory|network>`. Without `functions` rows pass unchanged (no results, no check).
    `functions_hash` only marks which version of the functions ran (the step's identity)."""
    if not functions:
        return df
    conversations, metas = messages_of(df), meta_dicts(df)
    calls = [[c for c in conversation[-1].get("tool_calls") or []] if conversation else [] for conversation in conversations]
    programs = [(RUNNER.format(module=functions, calls=json.dumps(
        [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in row])), None)
        for row in calls]
    outcomes = run_many(programs, limits=Limits(seconds, memory_mb), python_path=(python_path,) if python_path else ())
    reasons = []
    for conversation, row, outcome, meta in zip(conversations, calls, outcomes, metas):
        results = None
        if outcome.status == "ok":
            try:
                results = json.loads(outcome.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                results = None
        meta.setdefault("tools", {})["execution"] = {"status": outcome.status, "error": outcome.error[-300:]}
        reasons.append(None if results is not None else f"execution:{outcome.status if outcome.status != 'ok' else 'error'}")
        for call, result in zip(row, results or []):
            conversation.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                                 "content": json.dumps(result, ensure_ascii=False)})
    return df.with_columns(pl.Series("messages", conversations, dtype=POLARS_SCHEMA["messages"]), dump_meta(metas),
                           pl.Series("drop_reason", reasons, dtype=pl.String))


def _results_text(conversation: list[dict]) -> str:
    return "\n".join(f"{m.get('name')}: {m['content']}" for m in conversation if m["role"] == "tool")


def judge(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 128) -> pl.DataFrame:
    """Stage: APIGen's semantic check by an engine judge; a "passes": false verdict drops the row as
    `semantic:rejected`, an unreadable one as `semantic:unparseable`."""
    conversations, metas = messages_of(df), meta_dicts(df)
    prompts = []
    for conversation in conversations:
        calls = [c["function"] for m in conversation if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        results = _results_text(conversation)
        prompts.append(chat(JUDGE.format(query=conversation[0]["content"], calls=json.dumps(calls, ensure_ascii=False),
                                         results=f"The functions returned:\n{results}\n" if results else "",
                                         and_results=" and their results" if results else "")))
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens, json_schema=Sampling.schema(VERDICT))
    reasons = []
    for [completion], meta in zip(engine.generate(prompts, sampling), metas):
        verdict = parse_verdict(completion.text)
        meta.setdefault("tools", {})["semantic"] = {"verdict": verdict, "raw": completion.text, "judge": engine.model_name}
        reasons.append(failure_reason([completion]) or (
            "semantic:unparseable" if verdict is None else None if verdict else "semantic:rejected"))
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def parse_verdict(text: str | None) -> bool | None:
    """The judge's "passes" (None when the reply holds no JSON object with a boolean "passes").

    >>> parse_verdict('{"thought": "ok", "passes": true}'), parse_verdict("yes"), parse_verdict('{"passes": "yes"}')
    (True, None, None)
    """
    if not text or "{" not in text:
        return None
    try:
        found, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])
    except json.JSONDecodeError:
        return None
    return found.get("passes") if isinstance(found, dict) and isinstance(found.get("passes"), bool) else None


def answer(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 256, temperature: float = 0.3) -> pl.DataFrame:
    """Stage: the final assistant answer from the tool results (rows without results end with their calls, as
    xLAM's data does); an empty answer drops the row as `no_final_answer`."""
    conversations = messages_of(df)
    todo = [i for i, c in enumerate(conversations) if c and c[-1]["role"] == "tool"]
    prompts = [chat(ANSWER.format(query=conversations[i][0]["content"], results=_results_text(conversations[i])))
               for i in todo]
    completions = engine.generate(prompts, Sampling(temperature=temperature, max_tokens=max_tokens),
                                  [seed_of("tools-answer", df["id"][i]) % 2**31 for i in todo]) if todo else []
    reasons = [None] * df.height
    for i, [completion] in zip(todo, completions):
        text = (completion.text or "").strip()
        reasons[i] = failure_reason([completion]) or (None if text else "no_final_answer")
        if text:
            conversations[i] = [*compact(conversations[i]), {"role": "assistant", "content": text}]
    return df.with_columns(pl.Series("messages", conversations, dtype=POLARS_SCHEMA["messages"]),
                           pl.Series("drop_reason", reasons, dtype=pl.String))


def load_tools(path) -> list[str]:
    """The tools of a JSON file (a list of tool schemas, OpenAI's shape or bare {name, description, parameters}), as
    the record's `tools`; ValueError naming the file when it is not one."""
    from pathlib import Path

    from pipeline.core.messages import BadToolCall, tools_column

    try:
        tools = tools_column(Path(path).read_text())
    except (OSError, BadToolCall) as exc:
        raise ValueError(f"{path}: {exc}; give a JSON list of tool schemas ({{name, description, parameters}})") from None
    if not tools:
        raise ValueError(f"{path}: no tools in it; give a JSON list of tool schemas")
    for tool in tools:  # a schema that is not one is the user's error, found before any model is called
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for

        parameters = json.loads(tool)["function"]["parameters"]
        try:
            validator_for(parameters).check_schema(parameters)
        except SchemaError as exc:
            raise ValueError(f"{path}: tool {json.loads(tool)['function']['name']!r} has an invalid parameters "
                             f"schema: {exc.message}") from None
    return tools


__all__ = ["MODES", "answer", "call_errors", "call_id", "check_format", "execute", "generate", "judge", "load_tools",
           "parse_generated", "parse_verdict", "plan"]
