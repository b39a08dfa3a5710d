"""Message fields beyond role and content, in the OpenAI / TRL shape the record keeps: an assistant's `reasoning`
split from a `<think>…</think>` block (or taken from an API's `reasoning_content`), `tool_calls` of the OpenAI chat API
(`{id, type: "function", function: {name, arguments: JSON text}}`), and a conversation's `tools` (one JSON schema per
tool). Other exports' shapes are read here: xLAM/APIGen answers and LLaMA-Factory `function_call` turns
(`{"name", "arguments"}`, one or a list), tools as one JSON string or as bare `{name, description, parameters}`.
"""
from __future__ import annotations

import hashlib
import json

THINK_TAGS = ("<think>", "</think>")


class BadToolCall(ValueError):
    """A tool call or tool schema that cannot be read; `reason` is its drop_reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def split_reasoning(text: str | None, tags: tuple[str, str] = THINK_TAGS) -> tuple[str | None, str | None]:
    """(reasoning, content) of a reply: what precedes the closing tag (its opening tag removed: templates that open the
    block in the prompt leave it out) and what follows it; (None, text) when the block is not closed, so an unclosed
    block stays visible in `content` for the `think_closed` filter.

    >>> split_reasoning("<think>\\n2+2 is 4.\\n</think>\\n\\nThe answer is 4.")
    ('2+2 is 4.', 'The answer is 4.')
    >>> split_reasoning("Hmm, 4.</think>4")
    ('Hmm, 4.', '4')
    >>> split_reasoning("<think>never closed")
    (None, '<think>never closed')
    """
    opening, closing = tags
    if text is None or closing not in text:
        return None, text
    head, _, tail = text.partition(closing)
    before, has_open, inside = head.partition(opening)
    reasoning = (inside if has_open else head).strip()
    content = ((before.strip() + "\n\n") if has_open and before.strip() else "") + tail.strip()
    return reasoning, content


def unclosed_reasoning(text: str | None, tags: tuple[str, str] = THINK_TAGS) -> bool:
    """Whether a reply opens a reasoning block it never closes (a truncated or looping trace).

    >>> unclosed_reasoning("<think> still thinking"), unclosed_reasoning("<think>a</think> b")
    (True, False)
    """
    return bool(text) and text.count(tags[0]) > text.count(tags[1])


def call_id(*parts: object) -> str:
    """A stable tool-call id from what makes the call unique (OpenAI's ids look like `call_…`).

    >>> call_id("row", 0)
    'call_b23e641c8a62d478'
    """
    return "call_" + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def _json(value, what: str):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadToolCall("bad_tool_call" if what == "call" else "bad_tools", f"{what}: not JSON ({exc.msg})") from None
    return value


def tool_calls(value, *, ids: tuple = ()) -> list[dict]:
    """OpenAI `tool_calls` from any of: OpenAI's list, a list of `{"name", "arguments"}` (xLAM answers), one such dict
    (a LLaMA-Factory `function_call` turn), or JSON text of these. Arguments become JSON text of an object; calls
    without an id get call_id(*ids, position). BadToolCall when a call has no name or its arguments are not an object.

    >>> tool_calls('{"name": "add", "arguments": {"a": 1}}', ids=("r",))[0]["function"]
    {'name': 'add', 'arguments': '{"a": 1}'}
    """
    value = _json(value, "call")
    calls = value if isinstance(value, list) else [value]
    out = []
    for position, call in enumerate(calls):
        if not isinstance(call, dict):
            raise BadToolCall("bad_tool_call", f"call {position}: expected an object, got {type(call).__name__}")
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        name, arguments = function.get("name"), function.get("arguments", function.get("parameters", {}))
        if not isinstance(name, str) or not name:
            raise BadToolCall("bad_tool_call", f"call {position}: no function name")
        if isinstance(arguments, str):
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise BadToolCall("bad_tool_call", f"call {position} ({name}): arguments are not JSON") from None
        else:
            parsed = arguments
        if not isinstance(parsed, dict):
            raise BadToolCall("bad_tool_call", f"call {position} ({name}): arguments are not a JSON object")
        out.append({"id": str(call.get("id") or call_id(*ids, position)), "type": "function",
                    "function": {"name": name, "arguments": json.dumps(parsed, ensure_ascii=False)}})
    return out


def tool_schema(tool) -> dict:
    """One tool in OpenAI's shape `{"type": "function", "function": {name, description, parameters}}` from that shape or
    a bare `{name, description, parameters}` (xLAM, LLaMA-Factory); BadToolCall when it has no name.

    >>> tool_schema({"name": "add", "parameters": {"type": "object"}})["function"]["name"]
    'add'
    """
    tool = _json(tool, "tools")
    function = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise BadToolCall("bad_tools", f"a tool needs a name: {str(tool)[:80]}")
    return {"type": "function", "function": {**function, "parameters": function.get("parameters", {"type": "object", "properties": {}})}}


def tools_column(value) -> list[str] | None:
    """The record's `tools`: one JSON text per tool, from a list of tools or JSON text of one (None when none)."""
    value = _json(value, "tools")
    if value in (None, "", []):
        return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise BadToolCall("bad_tools", f"tools: expected a list of tool schemas, got {type(value).__name__}")
    return [json.dumps(tool_schema(t), ensure_ascii=False) for t in value]


def tools_by_name(tools: list[str] | None) -> dict[str, dict]:
    """{name: the tool's function object (name, description, parameters)} of a record's `tools`."""
    return {(f := json.loads(t)["function"])["name"]: f for t in tools or []}


def with_reasoning(content: str, reasoning: str | None, tags: tuple[str, str] = THINK_TAGS) -> str:
    """An assistant turn as one text with its reasoning in a think block first (for formats without a reasoning field).

    >>> with_reasoning("4", "2+2")
    '<think>\\n2+2\\n</think>\\n\\n4'
    """
    return f"{tags[0]}\n{reasoning}\n{tags[1]}\n\n{content or ''}" if reasoning else content or ""
