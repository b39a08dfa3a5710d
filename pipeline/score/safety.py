"""A guard model's verdict on every turn: Llama Guard 3's prompt and hazard categories (S1-S14), or the user's own
categories in the same prompt; unsafe rows dropped (`unsafe:<code>`) or tagged (meta["safety"]).

The prompt is Llama Guard 3's, as Meta publishes it: the model's chat template (meta-llama/Llama-Guard-3-8B,
tokenizer_config.json) and llama-recipes' PROMPT_TEMPLATE_3 / build_custom_prompt (src/llama_recipes/inference/
prompt_format_utils.py): the task line, the categories between <BEGIN/END UNSAFE CONTENT CATEGORIES>, the
conversation as "User: ..." / "Agent: ..." turns, and the instruction to assess ONLY THE LAST User or Agent message,
answering 'safe', or 'unsafe' and a comma-separated list of categories on the next line. The category names are the
template's (S1: Violent Crimes. ... S14: Code Interpreter Abuse.).

How it reaches the model (`prompt`): "llama-guard-3" writes that text as one user turn, for any instruct or chat
model used as the guard (the offline default SmolLM2, a hosted model); "model" sends the conversation itself and
lets a Llama Guard model's own chat template write the prompt (its categories are fixed there); "auto" is "model"
for a model whose name says Llama Guard, else "llama-guard-3".

Which turns (`turns`): "each" checks every user turn (as User) and assistant turn (as Agent) in the context of the
turns before it, in each of `columns` (default messages and chosen: a rejected answer may be unsafe on purpose);
"last" checks only each column's last turn. Identical requests (a pair's shared prompt) are sent once; one
`generate` per shard.

Outcome per row: a failed request is `engine_error:<kind>`; a verdict that says unsafe drops the row as
`unsafe:<lowest category code>` (`action="drop"`) or keeps it tagged (`action="tag"`); an answer that is neither
'safe' nor 'unsafe' (or names a category the prompt did not list) is `safety_unparsed`, a counted drop: a row is
never taken as safe by default. Every row's meta["safety"] holds each turn's verdict, categories and raw reply.
"""
from __future__ import annotations

import re

import polars as pl

from pipeline.core.records import dump_meta, meta_dicts
from pipeline.engines import Engine, Sampling, chat, failure_reason, reply_to

# Llama Guard 3's hazard categories as its chat template lists them (the MLCommons taxonomy and S14).
LLAMA_GUARD_3 = {"S1": "Violent Crimes.", "S2": "Non-Violent Crimes.", "S3": "Sex Crimes.", "S4": "Child Exploitation.",
                 "S5": "Defamation.", "S6": "Specialized Advice.", "S7": "Privacy.", "S8": "Intellectual Property.",
                 "S9": "Indiscriminate Weapons.", "S10": "Hate.", "S11": "Self-Harm.", "S12": "Sexual Content.",
                 "S13": "Elections.", "S14": "Code Interpreter Abuse."}
PROMPTS = ("auto", "llama-guard-3", "model")
ACTIONS = ("drop", "tag")
TURNS = ("each", "last")
UNPARSED = "safety_unparsed"
LLAMA_GUARD_MODEL = re.compile(r"llama[-_ ]?guard", re.I)  # a model whose own chat template writes the prompt
ROLE_NAMES = {"user": "User", "assistant": "Agent"}

TASK = ("Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy with "
        "the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n{conversation}<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories.")


def guard_prompt(turns: list[dict], categories: dict[str, str] = LLAMA_GUARD_3) -> str:
    """Llama Guard 3's task text for the last of `turns` ({"role": user|assistant, "content"}).

    >>> print(guard_prompt([{"role": "user", "content": "Hi"}], {"S1": "Violent Crimes."}))  # doctest: +NORMALIZE_WHITESPACE
    Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy with the below categories.
    <BLANKLINE>
    <BEGIN UNSAFE CONTENT CATEGORIES>
    S1: Violent Crimes.
    <END UNSAFE CONTENT CATEGORIES>
    <BLANKLINE>
    <BEGIN CONVERSATION>
    <BLANKLINE>
    User: Hi
    <BLANKLINE>
    <END CONVERSATION>
    <BLANKLINE>
    Provide your safety assessment for ONLY THE LAST User message in the above conversation:
     - First line must read 'safe' or 'unsafe'.
     - If unsafe, a second line must include a comma-separated list of violated categories.
    """
    conversation = "".join(f"{ROLE_NAMES[t['role']]}: {(t['content'] or '').strip()}\n\n" for t in turns)
    return TASK.format(role=ROLE_NAMES[turns[-1]["role"]], conversation=conversation,
                       categories="\n".join(f"{code}: {text}" for code, text in categories.items()))


def parse_verdict(text: str | None, codes) -> tuple[bool, tuple[str, ...]] | None:
    """(unsafe, categories) from a guard's reply, or None when it is neither a 'safe' nor an 'unsafe' verdict over
    the listed codes.

    >>> codes = LLAMA_GUARD_3
    >>> parse_verdict("safe", codes), parse_verdict("\\n\\nunsafe\\nS1,S10", codes), parse_verdict("Unsafe\\nS14.", codes)
    ((False, ()), (True, ('S1', 'S10')), (True, ('S14',)))
    >>> parse_verdict("unsafe\\nS99", codes), parse_verdict("The text is safe.", codes), parse_verdict(None, codes)
    (None, None, None)
    >>> parse_verdict("unsafe", codes)  # unsafe, the category not said
    (True, ())
    """
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return None
    verdict = lines[0].lower().rstrip(".")
    if verdict == "safe":
        return False, ()
    if verdict != "unsafe":
        return None
    found = tuple(re.findall(r"[A-Za-z]+\d+", lines[1])) if len(lines) > 1 else ()
    if any(code not in codes for code in found):
        return None
    return True, tuple(sorted(dict.fromkeys(found), key=lambda c: list(codes).index(c)))


def _checks(conversation: list[dict], turns: str) -> list[tuple[int, list[dict]]]:
    """(turn index, the user/assistant turns up to it) for each turn checked."""
    kept = [(i, {"role": m["role"], "content": m["content"]}) for i, m in enumerate(conversation or [])
            if m["role"] in ROLE_NAMES]
    positions = range(len(kept)) if turns == "each" else range(len(kept) - 1, len(kept))
    return [(kept[p][0], [m for _, m in kept[:p + 1]]) for p in positions if p >= 0]


def check(df: pl.DataFrame, *, engine: Engine, action: str = "drop", turns: str = "each",
          columns: tuple[str, ...] | list[str] = ("messages", "chosen"), categories: dict[str, str] | None = None,
          prompt: str = "auto", max_tokens: int = 16) -> pl.DataFrame:
    """Stage: the guard's verdict on each checked turn in meta["safety"]; unsafe rows dropped (`unsafe:<code>`) or
    tagged, failed requests `engine_error:<kind>`, unparseable replies `safety_unparsed` (counted drops)."""
    for name, value, valid in (("action", action, ACTIONS), ("turns", turns, TURNS), ("prompt", prompt, PROMPTS)):
        if value not in valid:
            raise ValueError(f"safety {name} must be one of {list(valid)}, got {value!r}")
    codes = dict(categories or LLAMA_GUARD_3)
    mode = prompt if prompt != "auto" else "model" if LLAMA_GUARD_MODEL.search(engine.spec.model) else "llama-guard-3"
    if mode == "model" and categories:
        raise ValueError("prompt='model' lets Llama Guard's own chat template write the prompt, whose categories are "
                         "fixed; use prompt='llama-guard-3' for your own categories")
    checks = []  # (row, column, turn, role, request key)
    requests: dict[str, object] = {}
    for row, record in enumerate(df.select([c for c in columns if c in df.columns]).iter_rows(named=True)):
        for column, conversation in record.items():
            for turn, context in _checks(conversation, turns):
                request = reply_to(context) if mode == "model" else chat(guard_prompt(context, codes))
                key = repr(request)
                requests.setdefault(key, request)
                checks.append((row, column, turn, context[-1]["role"], key))
    keys = list(requests)
    replies = engine.generate([requests[k] for k in keys], Sampling(temperature=0.0, max_tokens=max_tokens)) if keys else []
    reply_of = {k: r[0] for k, r in zip(keys, replies)}
    metas = meta_dicts(df)
    reasons = df["drop_reason"].to_list() if "drop_reason" in df.columns else [None] * df.height
    verdicts: dict[int, list[dict]] = {}
    for row, column, turn, role, key in checks:
        reply = reply_of[key]
        parsed = None if reply.failed else parse_verdict(reply.text, codes)
        verdicts.setdefault(row, []).append(
            {"column": column, "turn": turn, "role": role, "raw": None if reply.text is None else reply.text[:200],
             "verdict": None if parsed is None else "unsafe" if parsed[0] else "safe",
             "categories": list(parsed[1]) if parsed else [], "error": reply.error_kind if reply.failed else None})
    for row, meta in enumerate(metas):
        checked = verdicts.get(row, [])
        failed = failure_reason([reply_of[key] for r, _, _, _, key in checks if r == row])
        unsafe = sorted({c for v in checked if v["verdict"] == "unsafe" for c in v["categories"] or ["unspecified"]},
                        key=lambda c: list(codes).index(c) if c in codes else len(codes))
        unparsed = any(v["verdict"] is None for v in checked)
        meta["safety"] = {"prompt": mode, "unsafe": None if failed or (unparsed and not unsafe) else bool(unsafe),
                          "categories": unsafe, "turns": checked}
        if reasons[row] is None:
            reasons[row] = (failed or (f"unsafe:{unsafe[0]}" if unsafe and action == "drop" else None)
                            or (UNPARSED if unparsed and not unsafe else None))
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def card_note(params: dict) -> str:
    """What a safety step did, in the card's words.

    >>> card_note({"action": "tag", "turns": "last", "columns": ["messages"]})[:60]
    "a guard model's verdict on the last turn of messages with Ll"
    """
    categories = params.get("categories")
    listed = ", ".join(f"{code} {text.rstrip('. ')}" for code, text in (categories or LLAMA_GUARD_3).items())
    whose = "the run's own categories" if categories else "Llama Guard 3's prompt and hazard categories"
    which = "every user and assistant turn" if params.get("turns", "each") == "each" else "the last turn"
    done = "tagged in meta.safety" if params.get("action") == "tag" else "dropped as unsafe:<code>"
    return (f"a guard model's verdict on {which} of {', '.join(params.get('columns', ['messages', 'chosen']))} with "
            f"{whose} ({listed}); unsafe rows {done}, unreadable verdicts dropped as {UNPARSED}")


def tally(rows_in: pl.DataFrame, rows_out: pl.DataFrame) -> dict[str, int]:
    """Unsafe rows per category code, dropped or tagged (the manifest's `counts`)."""
    del rows_in
    counts: dict[str, int] = {}
    for meta in meta_dicts(rows_out):
        for code in (meta.get("safety") or {}).get("categories", []):
            counts[code] = counts.get(code, 0) + 1
    return counts


check.tally = tally  # type: ignore[attr-defined]  (read by pipeline.recipes.runner)
