import hashlib
import json

import polars as pl
import pytest

from pipeline.score import tags
from pipeline.engines import EngineSpec, load_engine
from pipeline.core.records import meta_dicts


def test_official_prompts_are_pinned_byte_for_byte():
    # sha256 of the official prompts rendered for the input "X" (magpie exp/str_utils.py), trailing spaces included.
    digests = {name: hashlib.sha256(prompt.replace("{input}", "X").encode()).hexdigest()[:16]
               for name, (prompt, _, _) in tags.TAGS.items()}
    assert tags.DIFFICULTY_PROMPT.startswith("\n# Instruction \n\nYou first need to identify")
    assert '{   \n    "intent": "The user wants to [....]",' in tags.DIFFICULTY_PROMPT
    assert '"Creative writing",  # Users seek assistance with crafting stories, poems, or other creative texts. \n' in tags.CATEGORY_PROMPT
    assert '{ \n    "primary_tag": "<primary tag>",' in tags.CATEGORY_PROMPT
    assert "give an assesement, highlighting" in tags.QUALITY_PROMPT  # the official typo
    assert digests == PINNED


PINNED = {"quality": "ad1637e2440702a2", "difficulty": "144221dfb23413b2", "category": "aadd11c76ae415c2"}  # guards against edits


def frame(texts):
    return pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "source": ["t"] * len(texts),
                         "messages": [[{"role": "user", "content": t}] for t in texts], "meta": ["{}"] * len(texts)})


@pytest.mark.parametrize("reply, quality", [
    ('\n    "explanation": "clear",\n    "input_quality": "good"\n', "good"),         # good JSON (after the prefilled "{")
    ('"explanation": "x", "input_quality": "Excellent"', "excellent"),               # case folded
    ('"explanation": "x", "input_quality": "superb"', None),                          # out of set -> null
    ('"explanation": "unterminated', None),                                           # malformed -> null
])
def test_prefilled_parse(reply, quality):
    engine = load_engine(EngineSpec.make("fake", f"tagger-{hashlib.md5(reply.encode()).hexdigest()}",
                                         options={"script": {"rate the quality": reply}}))
    out = tags.tag(frame(["Explain TCP."]), engine=engine, tags=("quality",))
    assert out["input_quality"].to_list() == [quality]
    stored = meta_dicts(out)[0]["tags"]["quality"]
    assert stored["raw"] == "{" + reply + "}" and stored["structured"] is False
    assert engine.calls[-1][1].stop[0] == "}"  # then the template's end-of-turn stops


def test_json_with_trailing_text_and_other_vs_others():
    reply = '"primary_tag": "Other", "other_tags": ["Math", "Others", "Bogus"]}\nHope that helps!'
    engine = load_engine(EngineSpec.make("fake", "tagger-cat", options={"script": {"label the task tags": reply}}))
    out = tags.tag(frame(["Tell me a joke."]), engine=engine, tags=("category",), structured=False)
    assert out["task_category"].to_list() == ["Others"]
    assert out["other_task_categories"].to_list() == [["Math", "Others"]]
    assert tags.normalize("category", "primary_tag", "others") == "Others"


def test_one_call_per_tag_and_structured_mode_sends_the_schema():
    engine = load_engine(EngineSpec.make("fake", "tagger-all", options={"script": {"": '{"difficulty": "hard"}'}}))
    out = tags.tag(frame(["a", "b", "c"]), engine=engine, structured=True)
    assert [n for n, _ in engine.calls[-3:]] == [3, 3, 3]
    schema = json.loads(engine.calls[-2][1].json_schema_text)
    assert schema["properties"]["difficulty"]["enum"] == list(tags.DIFFICULTY_LEVELS)
    assert out["difficulty"].to_list() == ["hard"] * 3 and out["input_quality"].to_list() == [None] * 3
    with pytest.raises(ValueError, match="valid: \\['quality', 'difficulty', 'category'\\]"):
        tags.tag(frame(["a"]), engine=engine, tags=("safety",))


def test_language_with_lingua():
    out = tags.language(frame(["How do I bake bread at home?", "¿Cómo puedo hornear pan en casa?", "  "]))
    assert out["language"].to_list() == ["EN", "ES", None]
