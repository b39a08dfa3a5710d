"""I-SHEEP (Liang et al., arXiv 2408.08072; multimodal-art-projection/I-SHEEP): a model aligns itself from a handful of
seed tasks, iteration after iteration. One iteration's data, as stages:

1. `plan`: n rows, each with k seed tasks drawn for it (k = 3, the reference's `--origin_samples 3`).
2. `self_instruct`: the current model continues a self-instruct prompt (Alpaca's format, as the reference's
   `generate_instruction.py`: requirements, then `###`-separated `N. Instruction:` / `N. Input:` examples, then
   `k+1. Instruction:`) with one new task; the reference's rule-based cleanup (3 < words <= 150, no media words,
   no leading punctuation or non-ASCII, no leaked `Instruction:`/`Input:`/`noinput`, no URL) drops what fails it,
   counted by rule.
3. `answer`: the same model answers each new task, through its chat template (ours: the reference continues
   `{instruction}{input}\n` raw; the pairs train a chat model, so they are asked as chat turns).
4. `self_assess`: the same model rates each pair twice, 1-10 as `<score>||<explanation>` — quality (correct,
   succinct, clear, non-redundant) and instruction following (answers rather than continues the instruction,
   keeps the asked format, the instruction is clear) — parsed as the reference's `extract_number_from_eval`:
   a leading number, else the number before `||`, rounded, valid only in 1..10; an invalid score is a counted null
   (`unparseable_self_score`). The filter `self_assessed_at_least` keeps both >= 9 (the reference's `> 8`).

The loop and the training step are in pipeline/recipes/isheep.py. Sampling is the reference's (T 1, top-p 0.95).
Our deviation: one new task per request (the reference parses up to 16 from one completion), so every row has its
own seed and the output does not depend on batching. Prompts are in our words.
"""
from __future__ import annotations

import random
import re
import string

import polars as pl

from pipeline.core.records import dump_meta, empty, first_pairs, meta_dicts, record_id
from pipeline.engines import Engine, Sampling, chat, failure_reason

ORIGIN_SAMPLES = 3
TEMPERATURE, TOP_P = 1.0, 0.95
SELF_INSTRUCT = """You are asked to come up with a set of 20 diverse task instructions for an AI assistant; its answers will be evaluated.

Requirements:
1. Vary the verbs: do not start two instructions the same way.
2. Vary the phrasing: mix questions and imperative instructions.
3. Vary the task types: open-ended generation, classification, editing, reasoning, rewriting, and more.
4. A language model alone must be able to do the task: no images, audio or other media, no real-world actions such as setting a reminder.
5. Write the instructions in English, one or two sentences each.
6. Give an input when the task needs one: a specific, realistic example of at most about 100 words, never a placeholder. When the task needs none (for example "what is the highest peak in the world"), write "<noinput>" as its input.

List of 20 tasks:
"""
# The reference's blacklist: tasks a text model cannot do (media, actions).
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw", "plot",
             "go to", "video", "audio", "music", "flowchart", "diagram")
QUALITY = ("Here are an instruction and a response. Instruction: {instruction} Response: {response}\n"
           "Rate the response from 1 (poor: wrong, long-winded, unclear, repetitive in form or content) to 10 (good: "
           "correct, concise, clear, without repetition) for its quality. Answer in the form '<score>||<explanation>'. "
           "As a strict grader, your score is: ")
FOLLOWING = ("Here are an instruction and a response. Instruction: {instruction} Response: {response}\n"
             "Rate the response from 1 (it continues writing the instruction instead of answering it, ignores the "
             "format the instruction asks for, or the instruction itself is unclear) to 10 (it answers the instruction "
             "directly, keeps the format it asks for, and the instruction is clear) for how well it follows the "
             "instruction. Answer in the form '<score>||<explanation>'. As a strict grader, your score is: ")
MIN_SCORE = 9  # the reference keeps quality_score > 8 and following_score > 8


def plan(n: int, *, seed: int, seed_tasks: list[str], iteration: int = 1, k: int = ORIGIN_SAMPLES) -> pl.DataFrame:
    """`n` rows to fill, each with `k` seed tasks drawn for it; ids and draws depend only on (seed, iteration, i)."""
    if not seed_tasks:
        raise ValueError("I-SHEEP needs seed tasks: give --seeds a file of instructions (one task per row)")
    ids = [record_id("isheep", seed, iteration, i) for i in range(n)]
    metas = []
    for i, rid in enumerate(ids):
        row_seed = int(rid[:8], 16)
        examples = random.Random(row_seed).sample(seed_tasks, min(k, len(seed_tasks)))
        metas.append({"isheep": {"seed": seed, "iteration": iteration, "index": i, "row_seed": row_seed,
                                 "examples": examples}})
    frame = pl.DataFrame({"id": ids, "source": ["isheep"] * n, "messages": [[] for _ in range(n)]},
                         schema_overrides={"messages": empty().schema["messages"]})
    return frame.with_columns(dump_meta(metas))


def encode_prompt(examples: list[str]) -> str:
    """The self-instruct prompt with `examples` as tasks 1..k, ending where task k+1's instruction starts."""
    prompt = SELF_INSTRUCT
    for number, task in enumerate(examples, 1):
        instruction, _, task_input = task.partition("\n\n")  # a user turn is "instruction\n\ninput" (pipeline.core.inputs)
        instruction = " ".join(instruction.split()).rstrip(":")
        prompt += f"###\n{number}. Instruction: {instruction}\n{number}. Input:\n{task_input.strip() or '<noinput>'}\n"
    return prompt + f"###\n{len(examples) + 1}. Instruction:"


def _has_word(word: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


def parse_task(completion: str, number: int) -> tuple[str | None, str | None]:
    """(the new task as one user turn, None), or (None, the cleanup rule it fails) for the completion of task
    `number` (the text after `number. Instruction:`)."""
    parts = re.split(rf"{number}\.\s+Input:", completion.split("###")[0], maxsplit=1)
    if len(parts) != 2:
        return None, "no_task_input"
    instruction, task_input = parts[0].strip(), parts[1].strip()
    task_input = "" if task_input.lower() == "<noinput>" else task_input
    words = len(instruction.split())
    if words <= 3 or words > 150:
        return None, "task_length"
    if any(_has_word(w, instruction) or _has_word(w, task_input) for w in BLACKLIST):
        return None, "task_blacklisted_word"
    if instruction[0] in string.punctuation or not instruction[0].isascii():
        return None, "task_bad_start"
    if ("noinput" in task_input.lower() or "no input" in task_input.lower() or "noinput" in instruction
            or re.search(r".\s+(Instruction|Input):", instruction) or re.search(r".\s+(Instruction|Input|Output):", task_input)):
        return None, "task_format_leak"
    if re.search(r"https?:", instruction) or re.search(r"https?:", task_input):
        return None, "task_url"
    return (f"{instruction}\n\n{task_input}" if task_input else instruction), None


def parse_score(text: str | None) -> int | None:
    """The 1-10 score at the start of a self-assessment, as the reference reads it; None if there is none.

    >>> [parse_score(t) for t in ("9||clear and correct", " 8.6 fine", "**10**", "11", "score: 9", "7 || ok")]
    [9, 9, 10, None, None, 7]
    """
    if not text:
        return None
    cleaned = re.sub(r"^\s*\W*", "", text)
    match = re.match(r"\d+(\.\d+)?", cleaned) or re.match(r"\d+(\.\d+)?", cleaned.split("||")[0].strip())
    if not match:
        return None
    score = round(float(match.group(0)))
    return score if 1 <= score <= 10 else None


def self_instruct(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 1024) -> pl.DataFrame:
    """Stage: one new task per planned row from the current model (a raw continuation of the self-instruct
    prompt, stopped at `###`); rows whose task fails the cleanup are dropped with the rule's name."""
    metas = meta_dicts(df)
    prompts = [encode_prompt(m["isheep"]["examples"]) for m in metas]
    sampling = Sampling(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=max_tokens, stop=("###",))
    replies = engine.generate(prompts, sampling, [m["isheep"]["row_seed"] % 2**31 for m in metas])
    messages, reasons = [], []
    for meta, reply in zip(metas, replies):
        task, reason = parse_task(reply[0].text or "", len(meta["isheep"]["examples"]) + 1)
        meta["isheep"]["task_model"] = engine.model_name
        messages.append([{"role": "user", "content": task}] if task else [])
        reasons.append(failure_reason(reply) or reason)
    return df.with_columns(pl.Series("messages", messages, dtype=df.schema["messages"]), dump_meta(metas),
                           pl.Series("drop_reason", reasons, dtype=pl.String))


def answer(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 1024) -> pl.DataFrame:
    """Stage: the current model's answer to each task (through its chat template); an empty one is dropped
    (`empty_response`)."""
    metas = meta_dicts(df)
    prompts = [chat(q) for q, _ in first_pairs(df)]
    sampling = Sampling(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=max_tokens)
    replies = engine.generate(prompts, sampling, [(m["isheep"]["row_seed"] + 1) % 2**31 for m in metas])
    messages, reasons = [], []
    for turns, reply in zip(df["messages"].to_list(), replies):
        text = (reply[0].text or "").strip()
        messages.append([*turns, {"role": "assistant", "content": text}])
        reasons.append(failure_reason(reply) or (None if text else "empty_response"))
    return df.with_columns(pl.Series("messages", messages, dtype=df.schema["messages"]),
                           pl.Series("drop_reason", reasons, dtype=pl.String))


def self_assess(df: pl.DataFrame, *, engine: Engine, max_tokens: int = 64) -> pl.DataFrame:
    """Stage: `self_quality` and `self_following`, the model's own 1-10 ratings of each pair (the explanation is
    kept in meta.isheep), each a raw continuation of the rating prompt after "your score is: " (no chat template:
    the reference's; in a chat turn small models answer in prose); a rating that cannot be read is null and the
    row is dropped (`unparseable_self_score`)."""
    pairs, metas = first_pairs(df), meta_dicts(df)
    sampling = Sampling(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=max_tokens)
    columns, failures = {}, []
    for name, prompt, offset in (("self_quality", QUALITY, 2), ("self_following", FOLLOWING, 3)):
        prompts = [prompt.format(instruction=q, response=r) for q, r in pairs]  # a raw continuation, as the reference
        replies = engine.generate(prompts, sampling, [(m["isheep"]["row_seed"] + offset) % 2**31 for m in metas])
        columns[name] = [parse_score(reply[0].text) for reply in replies]
        for meta, reply in zip(metas, replies):
            meta["isheep"][name] = (reply[0].text or "").strip()
        failures.append([failure_reason(reply) for reply in replies])
    reasons = [quality_failure or following_failure or (None if q is not None and f is not None else "unparseable_self_score")
               for quality_failure, following_failure, q, f in zip(*failures, columns["self_quality"], columns["self_following"])]
    return df.with_columns(*(pl.Series(name, values, dtype=pl.Int64) for name, values in columns.items()),
                           dump_meta(metas), pl.Series("drop_reason", reasons, dtype=pl.String))
