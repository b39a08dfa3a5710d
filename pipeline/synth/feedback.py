"""WildFeedback (Shi et al., arXiv 2408.15549): preference pairs mined from users' own reactions in chat logs.

Three stages, each one batched engine call per shard:
    classify(df)             every user follow-up is SAT / DSAT / NEITHER by the rubric below (JSON-schema output on
                             vLLM and llama.cpp); a conversation's first DSAT turn is the one mined
    extract_preferences(df)  what the dissatisfied user wants, stated from the conversation up to the DSAT turn
    preferred_pairs(df)      prompt = the conversation up to the turn that triggered DSAT; rejected = that assistant
                             response; chosen = a response generated with the preference in a system message, which
                             is not kept in the training prompt
Dropped, and counted: conversations without a follow-up, without DSAT, with unparseable verdicts or preferences.
The rubric and prompts are our wording of the paper's description.
"""
from __future__ import annotations

import polars as pl

from pipeline.core.records import dump_meta, messages_of, meta_dicts
from pipeline.engines import Engine, Sampling, failure_reason, reply_to
from pipeline.score.tags import ask_json

RUBRIC = ("SAT: the user is satisfied with the previous answer: thanks or praises it, says it worked, or builds on it "
          "with a new, related request. DSAT: the user is dissatisfied: complains, says it is wrong, incomplete, too "
          "long or off-topic, points out an error, repeats or rephrases the request, or asks for a revision. NEITHER: "
          "the message shows neither (e.g. an unrelated new topic).")
CLASSIFY_PROMPT = ("Read this conversation between a user and an AI assistant and judge how the user's last message "
                   "reacts to the assistant's previous answer.\n\n{rubric}\n\nConversation:\n{conversation}\n\n"
                   "The user's last message: {last}\n\nReply with a JSON object: "
                   '{{"verdict": "SAT" or "DSAT" or "NEITHER", "reason": "one sentence"}}')
PREFERENCE_PROMPT = ("The user in this conversation was dissatisfied with the assistant's answer.\n\nConversation:\n"
                     "{conversation}\n\nState what the user wants an answer to do differently, as one or two sentences "
                     'addressed to an assistant. Reply with a JSON object: {{"preference": "..."}}')
PREFERRED_SYSTEM = "When you answer, respect this preference of the user: {preference}"
VERDICTS = ("SAT", "DSAT", "NEITHER")
VERDICT_SCHEMA = {"type": "object", "properties": {"verdict": {"enum": list(VERDICTS)}, "reason": {"type": "string"}},
                  "required": ["verdict", "reason"]}
PREFERENCE_SCHEMA = {"type": "object", "properties": {"preference": {"type": "string"}}, "required": ["preference"]}


def transcript(messages: list[dict]) -> str:
    """A conversation as plain "User: ..." / "Assistant: ..." lines."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages if m["role"] in ("user", "assistant"))


def follow_ups(messages: list[dict]) -> list[int]:
    """Indices of the user turns that answer an assistant turn."""
    return [i for i, m in enumerate(messages) if m["role"] == "user" and i > 0 and messages[i - 1]["role"] == "assistant"]


def classify(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 128) -> pl.DataFrame:
    """Stage: a SAT/DSAT/NEITHER verdict for every follow-up; meta.wildfeedback.dsat_turn is the first DSAT turn."""
    conversations, metas = messages_of(df), meta_dicts(df)
    asks = [(row, i) for row, c in enumerate(conversations) for i in follow_ups(c)]
    prompts = [CLASSIFY_PROMPT.format(rubric=RUBRIC, conversation=transcript(conversations[row][:i + 1]),
                                      last=conversations[row][i]["content"]) for row, i in asks]
    answers = ask_json(engine, prompts, VERDICT_SCHEMA, max_tokens=max_tokens)
    verdicts: dict[int, list] = {}
    for (row, turn), (parsed, _, reply) in zip(asks, answers):
        verdict = parsed.get("verdict") if parsed else None
        verdicts.setdefault(row, []).append((turn, verdict if verdict in VERDICTS else None, parsed, reply))
    reasons = []
    for row, meta in enumerate(metas):
        found = verdicts.get(row, [])
        failed = failure_reason([reply for *_, reply in found]) if found else None
        dsat = next((turn for turn, verdict, *_ in found if verdict == "DSAT"), None)
        meta["wildfeedback"] = {"verdicts": [{"turn": t, "verdict": v, "reason": (p or {}).get("reason")} for t, v, p, _ in found],
                                "dsat_turn": dsat}
        reasons.append(failed or (None if dsat is not None else "no_follow_up" if not found else
                                  "unparseable_verdict" if any(v is None for _, v, *_ in found) else "no_dsat"))
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def extract_preferences(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 128) -> pl.DataFrame:
    """Stage: meta.wildfeedback.preference, the dissatisfied user's preference from the conversation up to DSAT."""
    conversations, metas = messages_of(df), meta_dicts(df)
    prompts = [PREFERENCE_PROMPT.format(conversation=transcript(c[:m["wildfeedback"]["dsat_turn"] + 1]))
               for c, m in zip(conversations, metas)]
    reasons = []
    for meta, (parsed, _, reply) in zip(metas, ask_json(engine, prompts, PREFERENCE_SCHEMA, max_tokens=max_tokens)):
        preference = parsed.get("preference") if parsed else None
        preference = preference.strip() if isinstance(preference, str) and preference.strip() else None
        meta["wildfeedback"]["preference"] = preference
        reasons.append(failure_reason([reply]) or (None if preference else "unparseable_preference"))
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def preferred_pairs(df: pl.DataFrame, *, engine: Engine, temperature: float = 0.0, max_tokens: int = 1024) -> pl.DataFrame:
    """Stage: the preference pair of each conversation (messages = the prompt, chosen / rejected = the prompt and each
    answer); the chosen answer is generated with the preference in the system turn, which the pair does not keep."""
    conversations, metas = messages_of(df), meta_dicts(df)
    prompts, rendered = [], []
    for conversation, meta in zip(conversations, metas):
        prompt = conversation[:meta["wildfeedback"]["dsat_turn"] - 1]  # ends with the user turn that was answered badly
        guide = PREFERRED_SYSTEM.format(preference=meta["wildfeedback"]["preference"])
        system = [m for m in prompt if m["role"] == "system"]
        merged = [{"role": "system", "content": (system[0]["content"] + "\n\n" if system else "") + guide}]
        prompts.append(prompt)
        rendered.append(reply_to(merged + [m for m in prompt if m["role"] != "system"]))
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens)
    replies = [c[0] for c in engine.generate(rendered, sampling)] if rendered else []
    chosen, rejected, reasons = [], [], []
    for prompt, conversation, meta, reply in zip(prompts, conversations, metas, replies):
        bad = conversation[meta["wildfeedback"]["dsat_turn"] - 1]
        good = (reply.text or "").strip()
        reasons.append(failure_reason([reply]) or (None if good else "empty_response"))
        chosen.append(prompt + [{"role": "assistant", "content": good}])
        rejected.append(prompt + [bad])
        meta["wildfeedback"]["chosen_sampling"] = sampling.as_dict()
    kind = df.schema["messages"]
    return df.with_columns(pl.Series("messages", prompts, dtype=kind), pl.Series("chosen", chosen, dtype=kind),
                           pl.Series("rejected", rejected, dtype=kind), dump_meta(metas),
                           pl.Series("drop_reason", reasons, dtype=pl.String))
