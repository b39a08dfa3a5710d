"""CodecLM with scripted engines: parsers, mix-and-match, position-swapped judging, routing and the iteration cap."""
import json
import re

import polars as pl
import pytest

from pipeline.core.records import compact
from pipeline.synth import codeclm
from pipeline.engines.templates import load_template
from pipeline.engines import Completion, EngineSpec, render


@pytest.mark.parametrize("text, expected", [
    ("Use case: creative writing\nSkills: role-play, sports", ("creative writing", ["role-play", "sports"])),
    ("Task: academic writing\nSkills: machine learning; statistics.", ("academic writing", ["machine learning", "statistics"])),
    ("use case : math\nskills: algebra, geometry, proofs, topology", ("math", ["algebra", "geometry", "proofs"])),
    ("Use case: math", None),
    ("Skills:\nUse case: x", None),
    (None, None),
])
def test_metadata_parser(text, expected):
    assert codeclm.parse_metadata(text) == expected


def test_rubric_and_list_parsers():
    text = "**Rubric 1:** depth of analysis\n**Action 1:** ask for a comparison\nRubric 2: scope\nAction 2: add a constraint\nRubric 3: x"
    assert codeclm.parse_rubrics(text) == [("depth of analysis", "ask for a comparison"), ("scope", "add a constraint")]
    assert codeclm.parse_numbered("1) a\n  2. b\nnot 3 c") == ["a", "b"]


def test_mix_and_match_is_reproducible_and_never_repeats_a_skill():
    seeds = [{"use_case": "code generation", "skills": ["python", "sql"]}, {"use_case": "math", "skills": ["algebra"]},
             {"use_case": "writing", "skills": ["poetry", "humor"]}]
    pairs = codeclm.augment(seeds, 12, seed=5)
    assert pairs == codeclm.augment(seeds, 12, seed=5) and len(pairs) == 12
    assert pairs[:3] == seeds  # the seeds' own metadata first
    assert all(len(p["skills"]) == len(set(p["skills"])) <= 3 for p in pairs)
    assert len({(p["use_case"], tuple(p["skills"])) for p in pairs}) == 12


class Scripted:
    """Strong answers "STRONG(q)", target answers "WEAK(q)"; the judge scores by a table on the question,
    possibly with a position bias, and improvements append " harder"."""

    def __init__(self, name, gaps, bias=0.0):
        self.spec = EngineSpec.make("fake", name)
        self.template = load_template("chatml")
        self.model_name = name
        self.gaps, self.bias = gaps, bias  # question prefix -> strong minus target score
        self.judged = []

    def generate(self, prompts, sampling, seeds=None):
        return [[Completion(text=self.reply(render(self.template, p)), finish_reason="stop")] * sampling.n for p in prompts]

    def reply(self, prompt):
        user = prompt.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
        if user.startswith("[Question]"):
            question = user.split("\n")[1]
            first = re.search(r"Assistant 1's Answer\]\n(.*)\n\[The End of Assistant 1", user).group(1)
            gap = next((g for k, g in self.gaps.items() if question.startswith(k)), 0.0)
            strong_first = first.startswith("STRONG")
            self.judged.append((question, strong_first))
            s, t = 5 + gap / 2, 5 - gap / 2
            one, two = (s, t) if strong_first else (t, s)
            return f"{one + self.bias:g} {two - self.bias:g}"
        if user.startswith("You are an expert in"):
            return "Rubric 1: depth\nAction 1: add a constraint\nRubric 2: scope\nAction 2: ask for examples"
        if user.startswith("You are an instruction improver"):
            return "New instruction: " + re.search(r"Instruction: (.*)\n", user).group(1) + " harder"
        return ("STRONG " if self.model_name == "strong" else "WEAK ") + user


def frame(questions):
    return pl.DataFrame({"id": [f"q{i}" for i in range(len(questions))], "source": "codeclm",
                         "messages": [[{"role": "user", "content": q}] for q in questions],
                         "meta": [json.dumps({"codeclm": {"metadata": {"use_case": "math", "skills": ["algebra"]},
                                                          "iteration": 1, "history": [q]}}) for q in questions]})


def run(monkeypatch, questions, gaps, bias=0.0, **kwargs):
    strong = Scripted("strong", gaps, bias)
    target = Scripted("target", gaps)
    return codeclm.contrastive(frame(questions), engine=strong, target=target, **kwargs), strong


def test_position_swap_cancels_a_judge_bias_and_routes_by_gap(monkeypatch):
    out, judge = run(monkeypatch, ["big gap", "negative gap", "small gap"], {"big": 6.0, "negative": -5.0, "small": 1.0}, bias=1.0)
    # each question judged in both orders per iteration
    assert sorted(set(judge.judged)) == sorted({(q, o) for q in ["big gap", "negative gap"] for o in (True, False)} |
                                               {(q, o) for q in ["small gap", "small gap harder", "small gap harder harder",
                                                                 "small gap harder harder harder"] for o in (True, False)})
    metas = [json.loads(m)["codeclm"] for m in out["meta"]]
    assert metas[0]["judgments"][0]["gap"] == 6.0  # the +-1 position bias cancels out
    assert out["messages"][0].to_list()[1]["content"].startswith("STRONG") and metas[0]["kept"] == "strong"
    assert out["messages"][1].to_list()[1]["content"].startswith("WEAK") and metas[1]["kept"] == "target"
    # |gap| <= theta: improved and re-judged, up to 4 iterations counting the basic one, then dropped
    assert metas[2]["iteration"] == 4 and len(metas[2]["judgments"]) == 4
    assert out["drop_reason"].to_list() == [None, None, "unresolved"]
    assert compact(out["messages"][2].to_list()) == [{"role": "user", "content": "small gap harder harder harder"}]


def test_keep_unresolved_and_threshold(monkeypatch):
    out, _ = run(monkeypatch, ["small gap"], {"small": 1.0}, keep_unresolved=True, max_iterations=2)
    assert out["drop_reason"].to_list() == [None] and json.loads(out["meta"][0])["codeclm"]["iteration"] == 2
    out, _ = run(monkeypatch, ["small gap"], {"small": 1.0}, theta=0.5)
    assert json.loads(out["meta"][0])["codeclm"]["kept"] == "strong"


def test_unparsable_judgments_are_dropped_not_defaulted(monkeypatch):
    strong = Scripted("strong", {})
    strong.reply = lambda prompt: "I think both are fine." if "[Question]" in prompt else "STRONG x"
    out = codeclm.contrastive(frame(["q"]), engine=strong, target=strong)
    assert out["drop_reason"].to_list() == ["judge_failed"]


def test_encode_and_decode_with_the_fake_engine():
    from pipeline.engines import load_engine

    engine = load_engine(EngineSpec.make("fake", "codec-fake", options={"script": {
        "Instruction: Sort a list in Rust": " code generation\nSkills: rust, algorithms",
        "Instruction: Plan a picnic": " planning\nSkills: logistics",
        "You are an instruction writer": " Write a Rust function.\n2. Plan a trip.\n3. Extra"}}))  # continues the prefilled "1."
    seeds = pl.DataFrame({"id": ["a", "b", "c"], "source": "import", "meta": ["{}"] * 3,
                          "messages": [[{"role": "user", "content": q}] for q in ["Sort a list in Rust", "Plan a picnic", "???"]]})
    encoded = codeclm.encode(seeds, engine=engine)
    assert encoded["drop_reason"].to_list() == [None, None, "metadata_unparsed"]
    decoded = codeclm.decode(encoded.filter(pl.col("drop_reason").is_null()), engine=engine, n_metadata=4, per_metadata=2)
    assert decoded.height == 8 and compact(decoded["messages"][0].to_list()) == [{"role": "user", "content": "Write a Rust function."}]
    assert json.loads(decoded["meta"][0])["codeclm"]["iteration"] == 1


def test_logprob_judge_scores_each_assistant_in_both_orders():
    class PositionBiasedJudge(Scripted):
        """Gives Assistant 1 a 9 and Assistant 2 a 1 whatever they wrote: a pure position bias."""

        def generate(self, prompts, sampling, seeds=None):
            digits = ["9" if render(self.template, p).endswith("Assistant 1: ") else "1" for p in prompts]
            return [[Completion(text=d, finish_reason="stop", logprobs=[{k: (0.0 if k == d else -1e4) for k in "123456789"}])]
                    for d in digits]

    judge = PositionBiasedJudge("judge", {})
    [(strong, target)], [failure] = codeclm.judge_pairs(judge, [("q", "s", "t")], mode="logprobs")
    assert failure is None
    assert strong == target == 5.5  # each got 10 in one order and 1 in the other: the bias cancels
    with pytest.raises(ValueError, match="valid: \\['text', 'logprobs'\\]"):
        codeclm.judge_pairs(judge, [("q", "s", "t")], mode="vibes")


def test_contrastive_output_does_not_depend_on_the_shard_size(tmp_path):
    """Requests are seeded by row id, not by the row's position in its shard."""
    from pipeline.core.rundir import read_shards
    from pipeline.recipes.runner import run_stage

    spec = EngineSpec.make("fake", "codec-shards", options={"top_logprobs": {"Assistant": {d: 0.0 for d in "123456789"}}})
    rows = frame([f"question {i}" for i in range(4)])
    outputs = []
    for size in (1, 4):
        run_stage(tmp_path / str(size), "filtered", codeclm.contrastive, source=rows, engine=spec,
                  shard_size=size, params={"judge_mode": "logprobs", "keep_unresolved": True, "max_iterations": 1})
        outputs.append(read_shards(tmp_path / str(size) / "filtered").select("id", "messages").to_dicts())
    assert outputs[0] == outputs[1] and all(len(row["messages"]) == 2 for row in outputs[0])
