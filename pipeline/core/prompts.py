"""Users' prompt templates: Jinja over a record's fields, strict about names.

A template sees each row as: every record column by name (`messages`, `chosen`, `deita_score`, ...; `meta` as a
dict), `instruction` and `response` (the first user turn and its answer, "" when absent), and each key of the
user's own input fields (`meta.fields`, what an import kept beside the conversation) at the top level where no
column has the name. A name the row does not have is an error naming the row and the fields it has (StrictUndefined:
a prompt with a hole in it is never sent). Jinja's sandbox renders them: a recipe is configuration, not code, and a
template cannot reach Python objects' internals. Chosen over str.format for loops and conditions over turns
(`{% for m in messages %}`), which users' prompts need.
"""
from __future__ import annotations

import json
from functools import lru_cache

import polars as pl
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from pipeline.core.records import RecordError, turns


class TemplateError(RecordError):
    """A template that does not parse, or that names a field a row does not have; the message says which."""


@lru_cache(maxsize=64)
def compile_template(source: str, what: str = "prompt"):
    """The compiled template; a syntax error is a TemplateError naming `what` and the line."""
    environment = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        return environment.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{what} template, line {exc.lineno}: {exc.message}") from None


def row_fields(df: pl.DataFrame) -> list[dict]:
    """Each row of `df` as the names a template sees (see the module docstring).

    >>> from pipeline.core.records import empty
    >>> row = pl.DataFrame({"id": ["a"], "source": ["s"], "messages": [[{"role": "user", "content": "Hi"}]],
    ...                     "meta": ['{"fields": {"topic": "tea"}}']})
    >>> fields = row_fields(row)[0]
    >>> fields["instruction"], fields["response"], fields["topic"], fields["meta"]["fields"]
    ('Hi', '', 'tea', {'topic': 'tea'})
    """
    rows = df.drop("_shard", strict=False).to_dicts()
    for row in rows:
        meta = json.loads(row.get("meta") or "{}")
        row["meta"] = meta
        conversation = [m for m in (row.get("messages") or []) if m]
        first = (turns(conversation) or [("", "")])[0]
        row.setdefault("instruction", first[0])
        row.setdefault("response", first[1])
        own = meta.get("fields")
        for key, value in (own.items() if isinstance(own, dict) else ()):
            row.setdefault(key, value)
    return rows


def render_rows(source: str, rows: list[dict], ids: list[str], *, what: str = "prompt", **extra) -> list[str]:
    """`source` rendered for each row (with `extra` names too); a name a row lacks is a TemplateError naming the
    fields the row has a value in (a null column is there too, but is seldom what the template meant)."""
    template = compile_template(source, what)
    rendered = []
    for number, (row, rid) in enumerate(zip(rows, ids)):
        try:
            rendered.append(template.render({**row, **extra}))
        except UndefinedError as exc:
            names = ", ".join(sorted({k for k, v in row.items() if v not in (None, [], "")} | set(extra)))
            raise TemplateError(f"{what} template: {exc.message} in row {number} (id={rid!r}); the row has: {names}. "
                                "Use one of them, or {{ meta.KEY }} for provenance") from None
    return rendered
