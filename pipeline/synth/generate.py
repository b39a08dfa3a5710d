"""Generation with the user's words: a Jinja prompt over each row's fields (pipeline.core.prompts), a system prompt,
n samples, sampling, and where the reply goes; optionally a JSON schema (or a pydantic model by import path) that the
reply must satisfy, as Curator's `LLM` with a response format and distilabel's TextGeneration do.

Where the reply goes (`output`), since records have no free columns (pipeline.core.records):
- `assistant`: the answer to the row's conversation, appended after its last user turn, or replacing its last
  assistant turn (a rewrite). Without `prompt`, the request is the conversation itself (with `system` as its system
  turn): answering with your own system prompt.
- `user`: the next user turn of a conversation that ends with the assistant's (a follow-up question).
- `instruction`: a new conversation whose one user turn is the reply (Evol-Instruct's rewrites, topics into questions),
  after the row's system turn if it has one.
- `conversation`: the rendered prompt as the user turn and the reply as the assistant's (the prompt is the data).
- `meta`: meta[key] only; the conversation is untouched.
With a schema, the parsed object is meta[key] (filters read it: filters.columns.meta_at_least("key.field", ...)), and a
message output takes its `field` (or the object as JSON text). The engine is constrained to the schema where it can be
(pipeline.score.tags.STRUCTURED_BACKENDS); every reply is validated (pydantic's model_validate for a model, else the
`jsonschema` library's validator for the schema's draft), and one that does not parse or validate drops its row as
`parse_error`, its raw text kept in meta["generate"][key]. Validation uses maintained libraries rather than a home-made
checker: JSON Schema has many keywords (formats, $ref, combinators) that a partial check would silently pass.

n > 1 makes n rows per input row, ids derived from (row id, key, sample) and `parent_id` the input's id; n = 1 keeps
the row's id. Sample j of row i is seeded with seed_of(row id, key, seed) + j, so shards and windows do not change it.
"""
from __future__ import annotations

import importlib
import json

import polars as pl

from pipeline.core.prompts import compile_template, render_rows, row_fields
from pipeline.core.records import dump_meta, messages_of, meta_dicts, record_id, seed_of
from pipeline.engines import Engine, Sampling, chat, failed, failure_reason, reply_to
from pipeline.score.tags import STRUCTURED_BACKENDS, parse_json_object

OUTPUTS = ("assistant", "user", "instruction", "conversation", "meta")
PARSE_ERROR = "parse_error"


def load_schema(schema: dict | str) -> tuple[dict, type | None]:
    """(the JSON schema, the pydantic model or None) of `schema`: a JSON schema, or "module:Model" naming a pydantic
    model; a bad one is a ValueError saying what to fix."""
    if isinstance(schema, dict):
        from jsonschema import SchemaError, validators

        try:
            validators.validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"generate schema is not a valid JSON schema: {exc.message}") from None
        return schema, None
    module, _, name = str(schema).partition(":")
    try:
        model = getattr(importlib.import_module(module), name)
        return model.model_json_schema(), model
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"generate schema {schema!r} must be a JSON schema or 'module:Model' naming an importable "
                         f"pydantic model ({type(exc).__name__}: {exc})") from None


def check_params(*, prompt: str | None = None, system: str | None = None, n: int = 1, temperature: float = 0.7,
                 top_p: float = 1.0, max_tokens: int = 512, output: str = "assistant", schema=None,
                 field: str | None = None, key: str = "generated", seed: int = 0, schema_code: str | None = None) -> None:
    """Raise ValueError (one line) for settings `generate` would refuse; recipes call it before any model loads."""
    if output not in OUTPUTS:
        raise ValueError(f"generate output {output!r} is not one of {list(OUTPUTS)}")
    if prompt is None and output != "assistant":
        raise ValueError(f"generate output {output!r} needs a prompt template (only 'assistant' answers the conversation "
                         "as it is)")
    if not isinstance(n, int) or n < 1 or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"generate n and max_tokens must be positive integers (got n={n!r}, max_tokens={max_tokens!r})")
    if not isinstance(key, str) or not key or "." in key:
        raise ValueError(f"generate key must be a meta key without dots (got {key!r})")
    if field is not None and schema is None:
        raise ValueError("generate field names a field of the schema's object: give a schema too")
    if key == "generate":
        raise ValueError("generate key 'generate' holds the provenance (meta.generate): choose another key")
    if schema is not None:
        properties = load_schema(schema)[0].get("properties") or {}
        if field is not None and field not in properties:
            raise ValueError(f"generate field {field!r} is not a property of the schema; it has {sorted(properties)}")
    compile_template(prompt or "", "generate prompt")
    compile_template(system or "", "generate system")


def _answerable(conversation: list[dict], system: str | None) -> list[dict]:
    """The conversation up to its last user turn (the reply is regenerated), under `system` when given."""
    last_user = max(i for i, m in enumerate(conversation) if m["role"] == "user")
    turns = [m for m in conversation[:last_user + 1] if not (system and m["role"] == "system")]
    return ([{"role": "system", "content": system}] if system else []) + turns


def _parsed(text: str | None, schema: dict, model) -> tuple[dict | None, str | None]:
    """(the validated object, None) or (None, why it is not one)."""
    value = parse_json_object(text)
    if value is None:
        return None, "no JSON object in the reply"
    if model is not None:
        from pydantic import ValidationError

        try:
            return model.model_validate(value).model_dump(mode="json"), None
        except ValidationError as exc:
            return None, str(exc).splitlines()[0] + ": " + "; ".join(e["msg"] for e in exc.errors()[:3])
    from jsonschema import validators

    errors = sorted(validators.validator_for(schema)(schema).iter_errors(value), key=lambda e: list(e.path))
    return (None, errors[0].message) if errors else (value, None)


def _placed(conversation: list[dict], output: str, prompt_text: str | None, system: str | None,
            text: str) -> tuple[list[dict] | None, str | None]:
    """(the row's new conversation, None), or (None, the drop reason) when the reply has no place in it."""
    if output == "assistant":
        if not any(m["role"] == "user" for m in conversation):
            return None, "no_user_turn"
        kept = conversation[:-1] if conversation[-1]["role"] == "assistant" else conversation
        return kept + [{"role": "assistant", "content": text}], None
    if output == "user":
        if not conversation or conversation[-1]["role"] != "assistant":
            return None, "not_answered"
        return conversation + [{"role": "user", "content": text}], None
    system_turn = [{"role": "system", "content": system}] if system else [m for m in conversation[:1] if m["role"] == "system"]
    if output == "instruction":
        return system_turn + [{"role": "user", "content": text}], None
    return system_turn + [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": text}], None


def generate(df: pl.DataFrame, *, engine: Engine, prompt: str | None = None, system: str | None = None, n: int = 1,
             temperature: float = 0.7, top_p: float = 1.0, max_tokens: int = 512, output: str = "assistant",
             schema: dict | str | None = None, field: str | None = None, key: str = "generated", seed: int = 0,
             schema_code: str | None = None) -> pl.DataFrame:
    """Generate with the user's prompt template (see the module docstring); one engine call per shard.
    `schema_code` is the code hash of a pydantic model's module, set by recipes so that editing the model recomputes
    the step; the stage does not read it."""
    check_params(prompt=prompt, system=system, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                 output=output, schema=schema, field=field, key=key, seed=seed)
    if df.is_empty():
        return df
    json_schema, model = load_schema(schema) if schema is not None else (None, None)
    structured = json_schema is not None and engine.spec.backend in STRUCTURED_BACKENDS
    rows, ids = row_fields(df), df["id"].to_list()
    texts = render_rows(prompt, rows, ids, what="generate prompt") if prompt is not None else [None] * df.height
    systems = render_rows(system, rows, ids, what="generate system") if system else [None] * df.height
    conversations = messages_of(df)
    if prompt is None:  # answer the conversation itself (up to its last user turn), under the user's system prompt
        asked = [i for i, c in enumerate(conversations) if any(m["role"] == "user" for m in c)]
        requests = [reply_to(_answerable(conversations[i], systems[i])) for i in asked]
    else:
        asked = list(range(df.height))
        requests = [chat(t, system=s) for t, s in zip(texts, systems)]
    sampling = Sampling(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                        json_schema=Sampling.schema(json_schema) if structured else None)
    seeds = [seed_of(rid, key, seed) % 2**31 for rid in ids]
    sent = engine.generate(requests, sampling, [seeds[i] for i in asked]) if requests else []
    unasked = [failed("no_user_turn: nothing to answer")] * n  # never sent; dropped as no_user_turn below
    replies = [unasked] * df.height
    for i, samples in zip(asked, sent):
        replies[i] = samples
    metas, answered = meta_dicts(df), set(asked)
    out: dict[str, list] = {"id": [], "parent_id": [], "messages": [], "meta": [], "drop_reason": [], "row": []}
    for i, samples in enumerate(replies):
        for j, completion in enumerate(samples):
            meta = json.loads(json.dumps(metas[i])) if n > 1 else metas[i]
            provenance = {"engine": engine.spec.backend, "model": engine.model_name, "sampling": sampling.as_dict(),
                          "seed": seeds[i] + j, "sample": j, "finish_reason": completion.finish_reason,
                          "n_tokens": completion.n_tokens, "structured": structured}
            reason = failure_reason([completion]) if i in answered else "no_user_turn"
            conversation, text = conversations[i], completion.text
            if reason is None and json_schema is not None:
                value, error = _parsed(text, json_schema, model)
                if value is None:
                    reason, provenance = PARSE_ERROR, provenance | {"raw": text, "error": error}
                else:
                    meta[key] = value
                    text = value.get(field) if field else value
                    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
            if reason is None and not text.strip():  # never an empty turn passed on as data
                reason = "empty_reply"
            elif reason is None and output == "meta" and json_schema is None:
                meta[key] = text.strip()
            elif reason is None and output != "meta":
                conversation, reason = _placed(conversations[i], output, texts[i], systems[i], text.strip())
            meta.setdefault("generate", {})[key] = provenance
            out["id"].append(ids[i] if n == 1 else record_id(ids[i], key, j))
            out["parent_id"].append(ids[i])
            out["messages"].append(conversation if reason is None else conversations[i])
            out["meta"].append(meta)
            out["drop_reason"].append(reason)
            out["row"].append(i)
    made = [pl.Series("id", out["id"], dtype=pl.String), dump_meta(out["meta"]),
            pl.Series("messages", out["messages"], dtype=df.schema["messages"]),
            pl.Series("drop_reason", out["drop_reason"], dtype=pl.String)]
    if n > 1:  # new records, each derived from its input row
        made.append(pl.Series("parent_id", out["parent_id"], dtype=pl.String))
    rows_of = pl.Series(out["row"], dtype=pl.UInt32)
    frame = df.select(pl.all().gather(rows_of)) if n > 1 else df
    return frame.with_columns(made)
