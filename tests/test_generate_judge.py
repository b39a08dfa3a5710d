"""The generic LLM stages of recipes: `generate` (the user's Jinja prompt, outputs, n samples, a JSON schema or a
pydantic model validated always, parse failures as counted drops), `judge` (a rubric with named aspects, expected
scores from logprobs, pairwise with position swap) and `filter` (the filter language with the user's drop reason);
logic on the fake engine, then both LLM stages on the real SmolLM2."""
import json
import math
import sys
import textwrap

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.core.records import POLARS_SCHEMA, empty
from pipeline.core.rundir import read_manifest, read_shards
from pipeline.engines import EngineSpec, load_engine
from pipeline.score.judge import judge
from pipeline.synth.generate import generate
from filters.columns import filter_rows

runner = CliRunner()
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "level": {"type": "integer", "maximum": 5}},
          "required": ["question", "level"]}


def frame(conversations: list[list[tuple[str, str]]], fields: list[dict] | None = None) -> pl.DataFrame:
    """Records with these conversations ((role, content) turns) and input fields (meta.fields)."""
    rows = {"id": [f"r{i}" for i in range(len(conversations))], "source": ["import"] * len(conversations),
            "messages": [[{"role": r, "content": c} for r, c in turns] for turns in conversations],
            "meta": [json.dumps({"fields": f}) for f in (fields or [{}] * len(conversations))]}
    return pl.DataFrame(rows).with_columns(pl.col("messages").cast(POLARS_SCHEMA["messages"]))


def fake(**options):
    return load_engine(EngineSpec.make("fake", "fake-model", options=options))


def test_generate_parses_validates_and_drops_what_does_not_fit_the_schema():
    engine = fake(script={"about tea": '{"question": "Why is tea green?", "level": 2}',
                          "about rain": '{"question": "Why does it rain?", "level": 9}',  # out of range
                          "about snow": "Snow is cold."})  # no JSON at all
    rows = frame([[]] * 3, [{"topic": "tea"}, {"topic": "rain"}, {"topic": "snow"}])
    out = generate(rows, engine=engine, prompt="Ask a question about {{ topic }}.", output="instruction", schema=SCHEMA,
                   field="question", key="q")
    assert out["drop_reason"].to_list() == [None, "parse_error", "parse_error"]
    assert out["messages"][0].to_list() == [{"role": "user", "content": "Why is tea green?", **dict.fromkeys(
        ["reasoning", "tool_calls", "tool_call_id", "name"])}]
    metas = [json.loads(m) for m in out["meta"]]
    assert metas[0]["q"] == {"question": "Why is tea green?", "level": 2} and "q" not in metas[1]
    assert "maximum" in metas[1]["generate"]["q"]["error"] and metas[2]["generate"]["q"]["raw"] == "Snow is cold."
    assert engine.calls[-1][0] == 3  # one batched call for the shard


def test_generate_with_a_pydantic_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "answers.py").write_text(textwrap.dedent('''
        from pydantic import BaseModel, Field

        class Rated(BaseModel):
            answer: str
            confidence: int = Field(ge=1, le=5)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    engine = fake(script={"one": '{"answer": "A", "confidence": 3}', "two": '{"answer": "B", "confidence": 7}'})
    out = generate(frame([[("user", "one")], [("user", "two")]]), engine=engine, schema="answers:Rated", field="answer")
    assert out["drop_reason"].to_list() == [None, "parse_error"]
    assert [m["content"] for m in out["messages"][0]] == ["one", "A"]
    assert "less than or equal to 5" in json.loads(out["meta"][1])["generate"]["generated"]["error"]
    sys.modules.pop("answers", None)


def test_generate_places_the_reply_where_the_output_says():
    engine = fake(script={"Rewrite": "Shorter.", "Follow": "And then?", "Translate": "Hallo", "<|im_start|>user\nHi": "Hey!"})
    answered = [("user", "Hi"), ("assistant", "Hello there, how are you today?")]
    rows = frame([answered, [("user", "Hi")]])
    rewrite = generate(rows, engine=engine, prompt="Rewrite: {{ response }}")
    assert [m["content"] for m in rewrite["messages"][0]] == ["Hi", "Shorter."]  # the last reply replaced
    assert [m["content"] for m in rewrite["messages"][1]] == ["Hi", "Shorter."]  # a reply appended
    follow = generate(rows, engine=engine, prompt="Follow up on {{ instruction }}", output="user")
    assert [m["content"] for m in follow["messages"][0]] == ["Hi", "Hello there, how are you today?", "And then?"]
    assert follow["drop_reason"].to_list() == [None, "not_answered"]
    conversation = generate(rows, engine=engine, prompt="Translate: {{ instruction }}", output="conversation", system="Be brief.")
    assert [(m["role"], m["content"]) for m in conversation["messages"][0]] == [
        ("system", "Be brief."), ("user", "Translate: Hi"), ("assistant", "Hallo")]
    kept = generate(rows, engine=engine, prompt="Translate: {{ instruction }}", output="meta", key="german")
    assert kept["messages"].to_list() == rows["messages"].to_list() and json.loads(kept["meta"][0])["german"] == "Hallo"
    calls = len(engine.calls)
    empty_row = frame([[]]).with_columns(pl.lit("r2").alias("id"))
    own_system = generate(pl.concat([rows, empty_row]), engine=engine, system="You are terse.")  # no prompt
    assert [m["content"] for m in own_system["messages"][0]] == ["Hi", "Hey!"]  # the last reply regenerated
    assert [m["content"] for m in own_system["messages"][1]] == ["Hi", "Hey!"]
    assert own_system["drop_reason"].to_list() == [None, None, "no_user_turn"]  # nothing to answer: not sent
    assert len(engine.calls) == calls + 1 and engine.calls[-1][0] == 2


def test_generate_samples_n_rows_each_derived_from_its_input():
    rows = frame([[("user", "Hi")], [("user", "Bye")]])
    out = generate(rows, engine=fake(fail_on=["Bye"]), n=3, temperature=1.0)
    assert out.height == 6 and out["parent_id"].to_list() == ["r0"] * 3 + ["r1"] * 3
    assert out["id"].n_unique() == 6 and not set(out["id"]) & {"r0", "r1"}
    assert len(set(m[-1]["content"] for m in out["messages"][:3])) == 3  # each sample its own seed
    assert out["drop_reason"].to_list()[3:] == ["engine_error:http_503"] * 3


def expected(logprobs: dict, digits: str) -> float:
    weights = {d: math.exp(logprobs[d]) for d in digits}
    return sum(int(d) * w for d, w in weights.items()) / sum(weights.values())


def test_judge_scores_each_aspect_by_expected_rating_and_merges_later_judges():
    top = {"1": -4.0, "2": -3.0, "3": -1.0, "4": -0.5, "5": -2.0}
    engine = fake(top_logprobs={"Is it honest?": {"1": 0.0}, "": top})  # that prompt's logprobs lack 2..5: no score
    rows = frame([[("user", "Hi"), ("assistant", "Hello")]])
    out = judge(rows, engine=engine, rubric="Judge the reply.", aspects={"helpfulness": "Does it help?",
                                                                         "honesty": "Is it honest?"})
    scores = out["judge_scores"][0].to_list()
    assert scores[0] == {"aspect": "helpfulness", "score": pytest.approx(expected(top, "12345"))}
    assert scores[1] == {"aspect": "honesty", "score": None} and out["judge_score"][0] is None  # null, never a default
    assert engine.calls[-1][1].max_tokens == 1 and engine.calls[-1][1].logprobs == 20
    again = judge(out, engine=engine, rubric="Judge the reply.", scale=[1, 5], aspects={"honesty": "Truthful?"})
    merged = {s["aspect"]: s["score"] for s in again["judge_scores"][0]}
    assert set(merged) == {"helpfulness", "honesty"} and merged["honesty"] == pytest.approx(expected(top, "12345"))
    assert again["judge_score"][0] == pytest.approx(expected(top, "12345"))  # this step's aspects only


def test_pairwise_judging_swaps_positions():
    pair = {"chosen": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Good answer"}]],
            "rejected": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Bad answer"}]]}
    rows = frame([[("user", "Q")]]).with_columns(pl.Series(k, v, dtype=POLARS_SCHEMA[k]) for k, v in pair.items())
    always_first = fake(top_logprobs={"": {"1": 0.0, "2": -3.0}})
    biased = judge(rows, engine=always_first, rubric="Which is better?", mode="pairwise")
    assert biased["judge_score"][0] == pytest.approx(0.5)  # a judge that always says "1" prefers neither
    fair = fake(top_logprobs={"[Response 1]\nGood answer": {"1": 0.0, "2": -3.0}, "": {"1": -3.0, "2": 0.0}})
    knows = judge(rows, engine=fair, rubric="Which is better?", mode="pairwise")
    assert knows["judge_score"][0] == pytest.approx(1 / (1 + math.exp(-3.0)))
    unpaired = judge(frame([[("user", "Q")]]), engine=fair, rubric="r", mode="pairwise")
    assert unpaired["drop_reason"].to_list() == ["no_pair"]


def test_filter_stage_names_its_drop_reason_and_filters_read_scores_meta_and_text():
    rows = frame([[("user", "Hi"), ("assistant", "Hello")], [("user", "Buy now"), ("assistant", "No")]]).with_columns(
        pl.Series("judge_score", [4.5, 2.0]), pl.Series("meta", ['{"q": {"level": 4}}', '{"q": {"level": 1}}']),
        pl.Series("judge_scores", [[{"aspect": "honesty", "score": 5.0}], [{"aspect": "honesty", "score": 1.0}]],
                  dtype=POLARS_SCHEMA["judge_scores"]))
    for params in ({"where": "judge_score >= 3"}, {"spec": [{"name": "meta_at_least", "key": "q.level", "min_value": 3}]},
                   {"spec": [{"name": "judge_aspect_at_least", "aspect": "honesty", "min_score": 3}]},
                   {"spec": [{"name": "text_not_matching", "pattern": "(?i)buy"}]}):
        out = filter_rows(rows, **params, reason="my_reason")
        assert out["drop_reason"].to_list() == [None, "my_reason"], params
    assert filter_rows(rows, where="judge_score > 9")["drop_reason"].to_list() == ["where", "where"]
    assert filter_rows(empty(), where="judge_score > 1").height == 0


def write(path, recipe: dict):
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_a_recipe_of_generate_judge_and_filter_counts_its_drops_and_nulls(tmp_path):
    script = {"number 2": "not json", "Ask": '{"question": "What is tea made of?", "level": 3}'}
    recipe = {"plan": {"n": 4, "seed": 0},
              "engines": {"writer": {"backend": "fake", "model": "w", "options": {"script": script}},
                          "judge": {"backend": "fake", "model": "j", "options": {"top_logprobs": {"": {"3": 0.0, "4": 0.0}}}}},
              "engine": "writer",
              "steps": [{"stage": "generate", "params": {"prompt": "Ask about row number {{ meta.magpie.index }}.",
                                                          "output": "instruction", "schema": SCHEMA, "field": "question"}},
                        {"stage": "generate", "name": "answered", "params": {"max_tokens": 8}},
                        {"stage": "judge", "engine": "judge", "params": {"rubric": "Is it good?", "scale": [1, 4]}},
                        {"stage": "judge", "name": "judged-3", "engine": "judge",
                         "params": {"rubric": "Is it good?", "scale": [3, 4], "aspects": {"a": "x", "b": "y"}}},
                        {"stage": "filter", "params": {"where": "judge_score >= 3.5", "reason": "judged_low"}}]}
    result = runner.invoke(app, ["recipe", "run", str(write(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    stages = {}
    for entry in read_manifest(tmp_path / "out"):
        if entry.get("status") == "done":
            s = stages.setdefault(entry["stage"], {"drops": {}, "nulls": {}})
            for kind in ("drops", "nulls"):
                for key, n in entry[kind].items():
                    s[kind][key] = s[kind].get(key, 0) + n
    assert stages["generate"]["drops"] == {"parse_error": 1}
    assert stages["judge"]["nulls"] == {"judge_score": 3}  # digits 1 and 2 missing: no expectation, counted
    assert stages["judged-3"]["nulls"] == {} and stages["filter"]["drops"] == {}
    out = read_shards(tmp_path / "out" / "filter")
    assert out.height == 3 and out["judge_score"].to_list() == [3.5] * 3
    assert [len(s) for s in out["judge_scores"]] == [3] * 3  # overall, a, b
    result = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert result.exception is None and result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    plotted = set(report["scores"])  # a histogram per aspect with scores; the first judge's "overall" has none
    assert {"judge_score", "judge: a", "judge: b"} <= plotted and "judge: overall" not in plotted
    assert "<h2>Top 5 selected rows by judge_score</h2>" in (tmp_path / "out" / "report" / "index.html").read_text()


def test_a_prompt_naming_a_missing_field_is_one_line_naming_the_row_fields(tmp_path):
    recipe = {"plan": {"n": 2, "seed": 0}, "engines": {"w": {"backend": "fake", "model": "w"}}, "engine": "w",
              "steps": [{"stage": "generate", "params": {"prompt": "About {{ topic }}", "output": "instruction"}}]}
    result = runner.invoke(app, ["recipe", "run", str(write(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    line = " ".join(result.output.split())
    assert "generate prompt template: 'topic' is undefined in row 0" in line and "the row has: id, meta, source." in line


def counted(run_dir, stage: str, kind: str) -> dict:
    """The manifest's drops or nulls of `stage`, summed over its shards."""
    total: dict = {}
    for entry in read_manifest(run_dir):
        if entry.get("stage") == stage and entry.get("status") == "done":
            for key, n in entry[kind].items():
                total[key] = total.get(key, 0) + n
    return total


@pytest.mark.real_llm
def test_generate_with_a_schema_and_a_two_aspect_judge_on_smollm2(tmp_path, llamacpp):
    from jsonschema import validate

    from pipeline.recipes.runner import run_stage

    schema = {"type": "object", "properties": {"question": {"type": "string", "maxLength": 80},
                                               "difficulty": {"enum": ["easy", "hard"]}},
              "required": ["question", "difficulty"], "additionalProperties": False}
    rows = frame([[]] * 2, [{"topic": t} for t in ("tea", "chess")])
    params = {"prompt": "Write one question about {{ topic }} as JSON with the keys question and difficulty (easy or hard).",
              "output": "instruction", "schema": schema, "field": "question", "max_tokens": 40, "temperature": 0.0}
    run_stage(tmp_path, "generated", generate, source=rows, params=params, engine=llamacpp.spec)
    kept, dropped = read_shards(tmp_path / "generated"), pl.read_parquet(tmp_path / "generated" / "dropped-00000.parquet")
    assert kept.height + dropped.height == 2 and counted(tmp_path, "generated", "drops") == (
        {"parse_error": dropped.height} if dropped.height else {})
    for row in kept.iter_rows(named=True):
        meta = json.loads(row["meta"])
        assert meta["generate"]["generated"]["structured"]  # llama.cpp's grammar from the schema
        validate(meta["generated"], schema)
        assert row["messages"][-1]["content"] == meta["generated"]["question"].strip()
    # cut off inside the object: never valid, every row a counted parse_error with its raw text kept
    run_stage(tmp_path, "cut", generate, source=rows[:1], params=params | {"max_tokens": 3}, engine=llamacpp.spec)
    assert counted(tmp_path, "cut", "drops") == {"parse_error": 1}
    raw = json.loads(pl.read_parquet(tmp_path / "cut" / "dropped-00000.parquet")["meta"][0])["generate"]["generated"]["raw"]
    assert raw.startswith("{")

    answered = frame([[("user", "What is 2 + 2?"), ("assistant", "2 + 2 = 4.")],
                      [("user", "Name a primary color."), ("assistant", "Banana.")]])
    run_stage(tmp_path, "judged", judge, source=answered, engine=llamacpp.spec, computes=("judge_score",),
              params={"rubric": "Judge the assistant's reply.", "aspects": {"correctness": "Is the answer right?",
                                                                            "clarity": "Is it easy to read?"}})
    judged = read_shards(tmp_path / "judged")
    assert judged.height == 2 and judged["drop_reason"].null_count() == 2
    for scores, mean in zip(judged["judge_scores"].to_list(), judged["judge_score"].to_list()):
        assert [s["aspect"] for s in scores] == ["correctness", "clarity"]
        values = [s["score"] for s in scores]
        assert all(v is None or 1.0 <= v <= 5.0 for v in values)  # an expectation over the digits 1..5
        assert (mean is None) == (None in values) and (mean is None or mean == pytest.approx(sum(values) / 2))
    nulls = judged["judge_score"].null_count()
    assert counted(tmp_path, "judged", "nulls") == ({"judge_score": nulls} if nulls else {})
    assert sum(s["score"] is not None for row in judged["judge_scores"] for s in row) >= 2  # SmolLM2 rates most
