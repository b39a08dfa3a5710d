"""Magpie's tags (magpie-align/magpie exp/unitag.py): input quality, difficulty and task category from an LLM
tagger, and the language of the instruction.

Each tag is one batched engine call per shard at temperature 0. Where the backend supports it (vLLM,
llama.cpp) the output is constrained to a JSON schema whose enums are the official value sets;
otherwise the reference's way is used: the assistant turn is prefilled with "{", generation stops at
"}", and the JSON is parsed defensively. A failed parse or an out-of-set value is null (counted in the
manifest), with the raw text kept in `meta["tags"]`.

"Other" vs "Others": the official prompt lists "Others" while its concatenation notebook validates
against "Other", so every "Others" became null there. Here the canonical value is "Others" (the prompt's
word) and "Other" is accepted as the same category.
"""
from __future__ import annotations

import json
from functools import cache

import polars as pl

from pipeline.engines import Engine, Sampling, chat, failure_reason
from filters.magpie import DIFFICULTY_LEVELS, QUALITY_LEVELS
from pipeline.core.records import dump_meta, first_instructions, meta_dicts

CATEGORIES = ("Information seeking", "Reasoning", "Planning", "Editing", "Coding & Debugging", "Math", "Role playing",
              "Data analysis", "Creative writing", "Advice seeking", "Brainstorming", "Others")
CATEGORY_ALIASES = {c.lower(): c for c in CATEGORIES} | {"other": "Others"}

# The official prompts, byte for byte ({input} is replaced, not str.format-ted: the text holds braces).
DIFFICULTY_PROMPT = '''
# Instruction 

You first need to identify the given user intent and then label the difficulty level of the user query based on the content of the user query.

## User Query
```
{input}
```

## Output Format
Given the user query, in your output, you first need to identify the user intent and the knowledge needed to solve the task in the user query.
Then, rate the difficulty level of the user query as `very easy`, `easy`, `medium`, `hard`, or `very hard`.

Now, please output the user intent and difficulty level below in a json format by filling in the placeholders in []:
```
{   
    "intent": "The user wants to [....]",
    "knowledge": "To solve this problem, the models need to know [....]",
    "difficulty": "[very easy/easy/medium/hard/very hard]"
}
```
'''
CATEGORY_PROMPT = '''
# Instruction

Please label the task tags for the user query.

## User Query
```
{input}
```

## Tagging the user input
Please label the task tags for the user query. You will need to analyze the user query and select the most relevant task tag from the list below.

all_task_tags = [
    "Information seeking",  # Users ask for specific information or facts about various topics.
    "Reasoning",  # Queries require logical thinking, problem-solving, or processing of complex ideas.
    "Planning",  # Users need assistance in creating plans or strategies for activities and projects.
    "Editing",  # Involves editing, rephrasing, proofreading, or other tasks related to the composition of general written content.
    "Coding & Debugging",  # Users seek help with writing, reviewing, or fixing code in programming.
    "Math",  # Queries related to mathematical concepts, problems, and calculations.
    "Role playing",  # Users engage in scenarios requiring ChatGPT to adopt a character or persona.
    "Data analysis",  # Requests involve interpreting data, statistics, or performing analytical tasks.
    "Creative writing",  # Users seek assistance with crafting stories, poems, or other creative texts. 
    "Advice seeking",  # Users ask for recommendations or guidance on various personal or professional issues.
    "Brainstorming",  # Involves generating ideas, creative thinking, or exploring possibilities. 
    "Others"  # Any queries that do not fit into the above categories or are of a miscellaneous nature.
]

## Output Format:
Note that you can only select a single primary tag. Other applicable tags can be added to the list of other tags.
Now, please output your tags below in a json format by filling in the placeholders in <...>:
```
{ 
    "primary_tag": "<primary tag>",
    "other_tags": ["<tag 1>", "<tag 2>", ... ]
}
```
'''
QUALITY_PROMPT = '''
# Instruction

You need to rate the quality of the user query based on its clarity, specificity, and coherence.

The rating scale is as follows:

- very poor: The query is unclear, vague, or incoherent. It lacks essential information and context.
- poor: The query is somewhat unclear or lacks important details. It requires significant clarification.
- average: The query is moderately clear and specific. It may require some additional information for a complete understanding.
- good: The query is clear, specific, and mostly well-formed. It provides sufficient context for understanding the user's intent.
- excellent: The query is very clear, specific, and well-articulated. It contains all the necessary information and context for providing a comprehensive response.

## User Query
```
{input}
```

## Output Format
Given the user query, you first need to give an assesement, highlighting the strengths and/or weaknesses of the user query.
Then, you need to output a rating from very poor to excellent by filling in the placeholders in [...]:
```
{   
    "explanation": "[...]",
    "input_quality": "[very poor/poor/average/good/excellent]"
}
```
'''


def _schema(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


# Free text and lists are capped: a small tagger otherwise loops inside a string or an array until the
# token limit and never closes the object.
TEXT = {"type": "string", "maxLength": 400}


TAGS = {
    # tag: (prompt, JSON schema, {json key: column})
    "quality": (QUALITY_PROMPT, _schema({"explanation": TEXT, "input_quality": {"enum": list(QUALITY_LEVELS)}},
                                        ["explanation", "input_quality"]), {"input_quality": "input_quality"}),
    "difficulty": (DIFFICULTY_PROMPT, _schema({"intent": TEXT, "knowledge": TEXT,
                                               "difficulty": {"enum": list(DIFFICULTY_LEVELS)}},
                                              ["intent", "knowledge", "difficulty"]), {"difficulty": "difficulty"}),
    "category": (CATEGORY_PROMPT, _schema({"primary_tag": {"enum": list(CATEGORIES)},
                                           "other_tags": {"type": "array", "items": {"enum": list(CATEGORIES)},
                                                          "maxItems": 3}},  # uniqueItems: vLLM cannot compile it
                                          ["primary_tag", "other_tags"]),
                 {"primary_tag": "task_category", "other_tags": "other_task_categories"}),
}
STRUCTURED_BACKENDS = ("vllm", "llamacpp", "openai-chat", "anthropic")  # JSON-schema constrained output


def parse_json_object(text: str | None) -> dict | None:
    """The JSON object in a tagger's reply: from its first "{" to its last "}"; None if there is none.

    >>> parse_json_object('{"difficulty": "easy"} and then some chatter')
    {'difficulty': 'easy'}
    >>> parse_json_object('"difficulty": "easy"')  # no braces at all
    >>> parse_json_object('{{"verdict": "SAT"}')  # a model that wrote the prefilled brace again
    {'verdict': 'SAT'}
    """
    if not text:
        return None
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    again = text.find("{", start + 1)
    for begin in (start, again) if again > start and not text[start + 1:again].strip() else (start,):
        try:
            value = json.loads(text[begin:end + 1])
        except json.JSONDecodeError:
            continue
        return value if isinstance(value, dict) else None
    return None


def ask_json(engine: Engine, prompts: list[str], schema: dict, *, max_tokens: int,
             structured: bool | None = None) -> list[tuple[dict | None, str | None, object]]:
    """One batched greedy call; per prompt (the reply as a JSON object or None, the raw reply, the completion).
    JSON-schema constrained on the backends that have it (STRUCTURED_BACKENDS); elsewhere the reply is prefilled
    with "{" and stopped at "}" (flat objects only), as the official tagger does."""
    structured = engine.spec.backend in STRUCTURED_BACKENDS if structured is None else structured
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens, stop=() if structured else ("}",),
                        json_schema=Sampling.schema(schema) if structured else None)
    opening = "" if structured else "{"
    replies = [c[0] for c in engine.generate([chat(p, opening=opening) for p in prompts], sampling)] \
        if prompts else []
    raws = [None if r.text is None else r.text if structured else "{" + r.text + "}" for r in replies]
    return [(parse_json_object(raw), raw, reply) for raw, reply in zip(raws, replies)]


def normalize(tag: str, key: str, value):
    """A parsed value mapped onto the official value set; None if it is not in it."""
    if tag == "category":
        if key == "other_tags":
            if not isinstance(value, list):
                return None
            return [CATEGORY_ALIASES[v.strip().lower()] for v in value if isinstance(v, str) and v.strip().lower() in CATEGORY_ALIASES]
        return CATEGORY_ALIASES.get(value.strip().lower()) if isinstance(value, str) else None
    levels = QUALITY_LEVELS if tag == "quality" else DIFFICULTY_LEVELS
    text = value.strip().lower() if isinstance(value, str) else None
    return text if text in levels else None


def tag(df: pl.DataFrame, *, engine: Engine, tags: tuple[str, ...] = tuple(TAGS), structured: bool | None = None,
        max_tokens: int = 512) -> pl.DataFrame:
    """Add the tag columns for each row's first instruction; one engine call per tag."""
    unknown = set(tags) - set(TAGS)
    if unknown:
        raise ValueError(f"unknown tags {sorted(unknown)}; valid: {list(TAGS)}")
    structured = engine.spec.backend in STRUCTURED_BACKENDS if structured is None else structured
    instructions = first_instructions(df)
    metas = meta_dicts(df)
    columns: dict[str, list] = {}
    failures: list[str | None] = [None] * df.height
    for name in tags:
        prompt, schema, fields = TAGS[name]
        answers = ask_json(engine, [prompt.replace("{input}", text) for text in instructions], schema,
                           max_tokens=max_tokens, structured=structured)
        failures = [f or failure_reason([reply]) for f, (_, _, reply) in zip(failures, answers)]
        for key, column in fields.items():
            columns.setdefault(column, [])
        for meta, (parsed, raw, reply) in zip(metas, answers):
            values = {column: normalize(name, key, parsed.get(key)) if parsed else None for key, column in fields.items()}
            for column, value in values.items():
                columns[column].append(value)
            extra = {k: v for k, v in (parsed or {}).items() if k not in fields}
            meta.setdefault("tags", {})[name] = {"raw": raw, "structured": structured, "parsed": parsed is not None,
                                                 "error": reply.error, **extra}
    types = {"other_task_categories": pl.List(pl.String)}
    return df.with_columns(*(pl.Series(c, v, dtype=types.get(c, pl.String)) for c, v in columns.items()), dump_meta(metas),
                           pl.Series("drop_reason", failures, dtype=pl.String))


def language(df: pl.DataFrame) -> pl.DataFrame:
    """Add `language` (ISO 639-1, upper case, as the official code) of each first instruction, with lingua."""
    detector = _detector()
    instructions = first_instructions(df)
    found = detector.detect_languages_in_parallel_of(instructions)
    return df.with_columns(pl.Series("language", [l.iso_code_639_1.name if (l and t.strip()) else None
                                                  for l, t in zip(found, instructions)], dtype=pl.String))


@cache
def _detector():
    """The all-languages detector (building it takes a second: once per process)."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()
