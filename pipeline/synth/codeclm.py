"""CodecLM (Wang et al., NAACL 2024 Findings; arXiv 2404.05875): encode seed instructions into metadata (use
case + skills), decode new instructions from mixed-and-matched metadata, make them harder with
Self-Rubrics, and keep those where a strong model clearly beats the target model (Contrastive Filtering).

No official code exists; the prompts are our own wording of the paper's Figures 7-11. Paper settings:
temperature 0.7 for encoding, decoding and rubrics; 4 rubrics per metadata and one random action per
improvement; a position-swapped pairwise judge (1-10, averaged over both orders); gap threshold
theta = 3; |gap| <= theta sends the instruction back to Self-Rubrics, up to 4 iterations counting the
basic generation as iteration 1; a negative gap keeps the *target* model's response (regularisation).
Instructions that never pass are dropped (the paper does not say; `keep_unresolved=True` keeps them).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

import polars as pl

from pipeline.engines import Chat, Engine, Sampling, chat, failure_reason
from pipeline.core.records import dump_meta, empty, first_instructions, meta_dicts, record_id, seed_of as _seed

TEMPERATURE = 0.7

ENCODE_PROMPT = """Read the instruction and name its use case and the skills needed to respond to it. The use case is the kind of task the instruction asks for. Give at most 3 skills, each 2 or 3 words, that would transfer to other instructions, and do not use the words "skill" or "knowledge".

Instruction: Pretend you are a commentator at a tennis final and describe the match point.
Use case: creative writing
Skills: role-play, sports

Instruction: How can I read a 2 TB text file in Python without running out of memory?
Use case: code generation
Skills: python

Instruction: Help me write the method section of my paper on pruning transformer models.
Use case: general knowledge question answering
Skills: academic writing, machine learning

Instruction: {instruction}
"""
DECODE_PROMPT = """You are an instruction writer. Write {n} instructions that a person could reasonably ask and that people can understand and answer. Make them diverse. Every instruction must fit this use case and need these skills:
Use case: {use_case}
Skills: {skills}
Number the instructions from 1 to {n}, one per line, and do not answer them."""
RUBRICS_PROMPT = """You are an expert in {use_case} who knows {skills}. Write 4 rubrics for judging how difficult and complex an instruction of this kind is, and for each rubric one action that would make such an instruction more challenging. Use exactly this format:
Rubric 1: ...
Action 1: ...
Rubric 2: ...
Action 2: ...
Rubric 3: ...
Action 3: ...
Rubric 4: ...
Action 4: ..."""
IMPROVE_PROMPT = """You are an instruction improver with expertise in {use_case}. Rewrite the instruction below to make it more challenging by following this action: {action}
The new instruction must stay reasonable, self-consistent and answerable, and must not copy words from the action.

Instruction: {instruction}

Write only the new instruction."""
JUDGE_PROMPT = """[Question]
{question}

[The Start of Assistant 1's Answer]
{first}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{second}
[The End of Assistant 2's Answer]

[System]
We would like your feedback on the two AI assistants' answers to the question above. Rate their helpfulness, relevance, accuracy and level of detail. Give each assistant an overall score from 1 to 10, where a higher score means better performance. Output one line with only the two scores, for Assistant 1 and Assistant 2, separated by a space."""


# --- parsers (model output is data: parsed defensively, never evaluated) -------------------------------

def parse_metadata(text: str | None) -> tuple[str, list[str]] | None:
    """(use case, up to 3 skills) from lines "Use case: ..." (or "Task: ...") and "Skills: a, b".

    >>> parse_metadata("Task: code generation\\nSkills: python, data structures; testing, extra")
    ('code generation', ['python', 'data structures', 'testing'])
    """
    if not text:
        return None
    use_case = re.search(r"^[ \t*]*(?:use case|task)[ \t*]*:[ \t*]*(\S.*)$", text, re.I | re.M)
    skills = re.search(r"^[ \t*]*skills?[ \t*]*:[ \t*]*(\S.*)$", text, re.I | re.M)
    if not use_case or not skills:
        return None
    names = [s.strip(" .") for s in re.split(r"[,;]", skills.group(1)) if s.strip(" .")]
    return (use_case.group(1).strip(" ."), names[:3]) if names else None


def parse_numbered(text: str | None) -> list[str]:
    """The items of a numbered list ("1. x", "2) y").

    >>> parse_numbered("Here you go:\\n1. Write a poem.\\n2) Sum a list in Go.\\nThanks")
    ['Write a poem.', 'Sum a list in Go.']
    """
    return [m.group(1).strip() for m in re.finditer(r"^\s*\d+\s*[.)]\s+(.+)$", text or "", re.M) if m.group(1).strip()]


def parse_rubrics(text: str | None) -> list[tuple[str, str]]:
    """(rubric, action) pairs from "Rubric N: ... / Action N: ..." lines, in order.

    >>> parse_rubrics("Rubric 1: depth\\nAction 1: add a constraint\\nRubric 2: scope\\nAction 2: widen it")
    [('depth', 'add a constraint'), ('scope', 'widen it')]
    """
    rubrics = re.findall(r"^[ \t*]*rubric[ \t]*\d*[ \t*]*[:.][ \t*]*(\S.*)$", text or "", re.I | re.M)
    actions = re.findall(r"^[ \t*]*action[ \t]*\d*[ \t*]*[:.][ \t*]*(\S.*)$", text or "", re.I | re.M)
    return [(r.strip(), a.strip()) for r, a in zip(rubrics, actions) if r.strip() and a.strip()]


def parse_scores(text: str | None) -> tuple[float, float] | None:
    """The two 1-10 scores of a pairwise judgment ("8 6"); None if absent or out of range.

    >>> parse_scores("8 6\\nAssistant 1 was more detailed."), parse_scores("Scores: 11 3"), parse_scores("good")
    ((8.0, 6.0), None, None)
    """
    match = re.search(r"(\d+(?:\.\d+)?)\s*[ ,/]\s*(\d+(?:\.\d+)?)", text or "")
    if not match:
        return None
    first, second = float(match.group(1)), float(match.group(2))
    return (first, second) if 1 <= first <= 10 and 1 <= second <= 10 else None


def parse_instruction(text: str | None) -> str | None:
    if not text:
        return None
    text = re.sub(r"^\s*(?:new|improved)?\s*instruction\s*:\s*", "", text.strip(), flags=re.I).strip().strip('"').strip()
    return text or None


# --- stages ----------------------------------------------------------------------------------------------

ENCODE_OPENING, DECODE_OPENING, RUBRICS_OPENING = "Use case:", "1.", "Rubric 1:"


def _text(reply, opening: str) -> str | None:
    return None if reply.failed or reply.text is None else opening + reply.text


def encode(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 128) -> pl.DataFrame:
    """Stage: `meta.codeclm.metadata` = {use_case, skills} per seed instruction; unparsable -> drop "metadata_unparsed"."""
    instructions = first_instructions(df)
    replies = engine.generate([chat(ENCODE_PROMPT.format(instruction=q), opening=ENCODE_OPENING) for q in instructions],
                              Sampling(temperature=TEMPERATURE, max_tokens=max_tokens),
                              [_seed(rid, "encode") for rid in df["id"].to_list()])
    metas, reasons = meta_dicts(df), []
    for meta, reply in zip(metas, replies):
        raw = _text(reply[0], ENCODE_OPENING)
        parsed = parse_metadata(raw)
        meta["codeclm"] = {"encode_raw": raw,
                           "metadata": {"use_case": parsed[0], "skills": parsed[1]} if parsed else None}
        reasons.append(f"engine_error:{reply[0].error_kind}" if reply[0].failed else (None if parsed else "metadata_unparsed"))
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))


def augment(metadata: list[dict], n: int, *, seed: int = 0) -> list[dict]:
    """Mix and match: `n` distinct (use case, 1-3 skills) pairs, a use case from the seeds' use cases and
    skills sampled without replacement from all their skills; the seeds' own pairs come first."""
    use_cases = list(dict.fromkeys(m["use_case"] for m in metadata))
    skills = list(dict.fromkeys(s for m in metadata for s in m["skills"]))
    if not use_cases or not skills:
        return []
    rng = random.Random(seed)
    out = {(m["use_case"], tuple(m["skills"])): None for m in metadata}
    for _ in range(50 * n):
        if len(out) >= n:
            break
        chosen = rng.sample(skills, rng.randint(1, min(3, len(skills))))
        out.setdefault((rng.choice(use_cases), tuple(chosen)), None)
    return [{"use_case": u, "skills": list(s)} for u, s in list(out)[:n]]


def decode(df: pl.DataFrame, *, engine: Engine, n_metadata: int = 200, per_metadata: int = 1, seed: int = 0,
           max_tokens: int = 512) -> pl.DataFrame:
    """Stage (whole frame): augment the seeds' metadata to `n_metadata` pairs and write `per_metadata` basic
    instructions for each; returns one record per instruction (iteration 1)."""
    metadata = [m["codeclm"]["metadata"] for m in meta_dicts(df) if (m.get("codeclm") or {}).get("metadata")]
    pairs = augment(metadata, n_metadata, seed=seed)
    prompts = [chat(DECODE_PROMPT.format(n=per_metadata, use_case=p["use_case"], skills=", ".join(p["skills"])),
                     opening=DECODE_OPENING) for p in pairs]
    replies = engine.generate(prompts, Sampling(temperature=TEMPERATURE, max_tokens=max_tokens),
                              [_seed(seed, i, "decode") for i in range(len(prompts))])
    ids, messages, metas, reasons = [], [], [], []
    for i, (pair, reply) in enumerate(zip(pairs, replies)):
        if reply[0].failed:  # one counted row for the metadata whose request failed
            ids.append(record_id("codeclm", seed, i, "failed"))
            messages.append(None)
            metas.append({"codeclm": {"metadata": pair, "iteration": 1, "error": reply[0].error}})
            reasons.append(failure_reason(reply))
        for j, text in enumerate(parse_numbered(_text(reply[0], DECODE_OPENING + " "))[:per_metadata]):
            ids.append(record_id("codeclm", seed, i, j))
            messages.append([{"role": "user", "content": text}])
            metas.append({"codeclm": {"metadata": pair, "iteration": 1, "history": [text]}})
            reasons.append(None)
    frame = pl.DataFrame({"id": ids, "source": ["codeclm"] * len(ids), "messages": messages, "drop_reason": reasons},
                         schema_overrides={"messages": empty().schema["messages"], "id": pl.String, "drop_reason": pl.String})
    return frame.with_columns(dump_meta(metas))


@dataclass
class Judged:
    strong: str
    target: str
    strong_score: float | None
    target_score: float | None

    @property
    def gap(self) -> float | None:
        return None if self.strong_score is None or self.target_score is None else self.strong_score - self.target_score


JUDGE_MODES = ("text", "logprobs")


def _order_scores(judge: Engine, prompts: list[Chat], mode: str,
                  max_tokens: int) -> tuple[list[tuple[float, float] | None], list[str | None]]:
    """(score of assistant 1, score of assistant 2) per judge prompt, or None; and each prompt's engine_error.

    text: the paper's way, one generated line "s1 s2". logprobs: for judges too small to write that line,
    each assistant's score is the expected digit 1-9 after "Assistant k: ", rescaled to 1-10.
    """
    if mode == "text":
        replies = judge.generate(prompts, Sampling(temperature=0.0, max_tokens=max_tokens))
        return [parse_scores(c[0].text) for c in replies], [failure_reason(c) for c in replies]
    from pipeline.score.ratings import rating

    openings = [replace(p, opening=p.opening + f"Assistant {k}: ") for p in prompts for k in (1, 2)]
    prefills = getattr(judge, "prefills", True)
    reads_one = prefills and getattr(judge, "has_logprobs", True)  # else the rating is read from words
    replies = judge.generate(openings, Sampling(temperature=0.0, max_tokens=1 if reads_one else 16, logprobs=20))
    ratings = [rating(c[0], first_token=prefills)[0] for c in replies]
    scaled = [None if r is None else 1.0 + (r - 1.0) * 9.0 / 8.0 for r in ratings]
    return ([None if None in scaled[2 * i:2 * i + 2] else (scaled[2 * i], scaled[2 * i + 1]) for i in range(len(prompts))],
            [failure_reason(replies[2 * i] + replies[2 * i + 1]) for i in range(len(prompts))])


def judge_pairs(judge: Engine, items: list[tuple[str, str, str]], *, mode: str = "text",
                max_tokens: int = 16) -> tuple[list[tuple[float | None, float | None]], list[str | None]]:
    """Position-swapped pairwise judging: for each (question, strong answer, target answer) the judge scores
    both orders and each model's score is the mean of its two; a failed parse in either order -> None.
    Also each item's engine_error where a judge request failed."""
    if mode not in JUDGE_MODES:
        raise ValueError(f"unknown judge mode {mode!r}; valid: {list(JUDGE_MODES)}")
    prompts = []
    for question, strong, target in items:
        prompts.append(chat(JUDGE_PROMPT.format(question=question, first=strong, second=target)))
        prompts.append(chat(JUDGE_PROMPT.format(question=question, first=target, second=strong)))
    scores, failures = _order_scores(judge, prompts, mode, max_tokens)
    out = []
    for i in range(len(items)):
        forward, swapped = scores[2 * i], scores[2 * i + 1]
        if forward is None or swapped is None:
            out.append((None, None))
        else:
            out.append(((forward[0] + swapped[1]) / 2, (forward[1] + swapped[0]) / 2))
    return out, [failures[2 * i] or failures[2 * i + 1] for i in range(len(items))]


def contrastive(df: pl.DataFrame, *, engine: Engine, target: Engine | None = None, theta: float = 3.0, max_iterations: int = 4,
                keep_unresolved: bool = False, response_max_tokens: int = 512, judge_mode: str = "text",
                seed: int = 0) -> pl.DataFrame:
    """Stage: Self-Rubrics + Contrastive Filtering, all rows in lockstep (each iteration: one call for the
    strong responses, one for the target's, one for the judge, one for improvements).

    `engine` is the strong model (and the judge); `target` the target model (default: `engine`).
    Kept rows get messages [user, chosen response]; others a drop_reason ("unresolved", "judge_failed" for an
    unparseable judgment, engine_error:<kind> for a failed request of any of the row's calls).
    """
    target_engine = target or engine
    ids = df["id"].to_list()  # requests are seeded by row id, so the output does not depend on the shard size
    metas = meta_dicts(df)
    instructions = first_instructions(df)
    rubrics, rubric_failures = _rubrics(engine, [m["codeclm"]["metadata"] for m in metas], seed)
    done: dict[int, tuple[str | None, str | None]] = {i: (None, f) for i, f in enumerate(rubric_failures) if f}
    pending = [i for i in range(df.height) if i not in done]  # row -> (response or None, drop reason or None)
    while pending:
        questions = [instructions[i] for i in pending]
        strong, strong_failures = _respond(engine, questions, [_seed(seed, ids[i], metas[i]["codeclm"]["iteration"], "s")
                                                               for i in pending], response_max_tokens)
        weak, weak_failures = _respond(target_engine, questions, [_seed(seed, ids[i], metas[i]["codeclm"]["iteration"], "t")
                                                                  for i in pending], response_max_tokens)
        scores, judge_failures = judge_pairs(engine, [(q, s or "", w or "") for q, s, w in zip(questions, strong, weak)], mode=judge_mode)
        improve = []
        for i, s, w, (s_score, w_score), *failed in zip(pending, strong, weak, scores, strong_failures, weak_failures, judge_failures):
            record = metas[i]["codeclm"]
            if any(failed):  # a failed request is never judged as an answer
                done[i] = (None, next(f for f in failed if f))
                continue
            judged = Judged(s or "", w or "", s_score, w_score)
            record.setdefault("judgments", []).append({"iteration": record["iteration"], "strong_score": s_score,
                                                       "target_score": w_score, "gap": judged.gap})
            if judged.gap is None:
                done[i] = (None, "judge_failed")
            elif abs(judged.gap) > theta:
                record["kept"] = "strong" if judged.gap > 0 else "target"
                done[i] = (judged.strong if judged.gap > 0 else judged.target, None)
            elif record["iteration"] >= max_iterations:
                record["kept"] = "strong (unresolved)" if keep_unresolved else None
                done[i] = (judged.strong, None) if keep_unresolved else (None, "unresolved")
            else:
                improve.append(i)
        if improve:
            actions = []
            for i in improve:
                options = rubrics[i] or [("", "Add a realistic constraint that makes the task harder.")]
                actions.append(random.Random(_seed(seed, ids[i], metas[i]["codeclm"]["iteration"], "a")).choice(options)[1])
            prompts = [chat(IMPROVE_PROMPT.format(use_case=metas[i]["codeclm"]["metadata"]["use_case"], action=a,
                                                           instruction=instructions[i])) for i, a in zip(improve, actions)]
            replies = engine.generate(prompts, Sampling(temperature=TEMPERATURE, max_tokens=256),
                                      [_seed(seed, ids[i], metas[i]["codeclm"]["iteration"], "i") for i in improve])
            for i, action, reply in zip(improve, actions, replies):
                if reply[0].failed:
                    done[i] = (None, failure_reason(reply))
                    continue
                new = parse_instruction(reply[0].text)
                metas[i]["codeclm"]["iteration"] += 1  # an unparsable improvement keeps the text but spends the iteration
                if new:
                    instructions[i] = new
                    metas[i]["codeclm"]["history"].append(new)
                metas[i]["codeclm"].setdefault("actions", []).append(action)
        pending = [i for i in improve if i not in done]
    messages = [[{"role": "user", "content": q}] + ([{"role": "assistant", "content": done[i][0]}] if done[i][0] else [])
                for i, q in enumerate(instructions)]
    return df.with_columns(pl.Series("messages", messages, dtype=df.schema["messages"]), dump_meta(metas),
                           pl.Series("drop_reason", [done[i][1] for i in range(df.height)], dtype=pl.String))


def _respond(engine: Engine, questions: list[str], seeds: list[int], max_tokens: int) -> tuple[list[str | None], list[str | None]]:
    replies = engine.generate([chat(q) for q in questions],
                              Sampling(temperature=TEMPERATURE, max_tokens=max_tokens), seeds)
    return [None if c[0].failed else c[0].text.strip() for c in replies], [failure_reason(c) for c in replies]


def _rubrics(engine: Engine, metadata: list[dict], seed: int) -> tuple[list[list[tuple[str, str]]], list[str | None]]:
    """Self-Rubrics: 4 (rubric, action) pairs per distinct metadata, one batched call; and per row the
    engine_error of its metadata's failed request."""
    keys = list(dict.fromkeys((m["use_case"], tuple(m["skills"])) for m in metadata))
    replies = engine.generate([chat(RUBRICS_PROMPT.format(use_case=u, skills=", ".join(s)), opening=RUBRICS_OPENING)
                               for u, s in keys],
                              Sampling(temperature=TEMPERATURE, max_tokens=512),
                              [_seed(seed, u, s, "rubrics") for u, s in keys])
    table = {key: parse_rubrics(_text(reply[0], RUBRICS_OPENING))[:4] for key, reply in zip(keys, replies)}
    failures = {key: failure_reason(reply) for key, reply in zip(keys, replies)}
    keys_of = [(m["use_case"], tuple(m["skills"])) for m in metadata]
    return [table[k] for k in keys_of], [failures[k] for k in keys_of]


def capacity_recovery_ratio(outcomes: list[tuple[str, str]]) -> float:
    """CRR = (wins + ties) / total for the target vs the strong model. Each item is judged in both orders
    ("win" | "tie" | "loss" for the target each time); it is a win only if it wins both, a loss only if it
    loses both, otherwise a tie.

    >>> capacity_recovery_ratio([("win", "win"), ("win", "loss"), ("loss", "loss"), ("tie", "tie")])
    0.75
    """
    if not outcomes:
        raise ValueError("no outcomes to compute a CRR from")
    losses = sum(1 for a, b in outcomes if a == b == "loss")
    return (len(outcomes) - losses) / len(outcomes)
