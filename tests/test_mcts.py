"""MCTS on scripted engines: tree shape, visits, UCT arithmetic, unused actions, raw-instruction reward,
lockstep batching, resume, and the dataset builders."""
import json
import math
import re

import polars as pl
import pytest

from pipeline.core.rundir import ShardState
from pipeline.synth import mcts
from pipeline.engines.templates import load_template
from pipeline.engines import Completion, EngineSpec, render
from pipeline.synth.mcts import Node, Search, Tree, backup, q_value, run_search, select, uct


class ScriptedEngine:
    """Optimizer: appends " [<principle name>]" to the query; responder: echoes the instruction it got."""

    def __init__(self, fail=()):
        self.spec = EngineSpec.make("fake", "scripted")
        self.template = load_template("chatml")
        self.model_name = "scripted"
        self.calls = []
        self.fail = set(fail)

    def generate(self, prompts, sampling, seeds=None):
        self.calls.append(len(prompts))
        out = []
        for prompt in (render(self.template, p) for p in prompts):
            match = re.search(r"paraphrased is \[(.*)\]\. You should optimize this query by (.*)\. You should also", prompt, re.S)
            if match:
                name = next(n for d in mcts.principles().values() for n, c in d.items() if c == match.group(2))
                text = None if name in self.fail else f"{match.group(1)} [{name}]"
            else:
                text = prompt.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
            done = Completion(text=text, finish_reason="stop") if text else Completion(None, "error", error="http_503: x")
            out.append([done] * sampling.n)
        return out


class CountingReward:
    """Reward = number of principle tags in the response, minus 0.5 per tag whose name starts with 'T'."""

    def __init__(self):
        self.pairs = []

    def score(self, pairs):
        self.pairs.extend(pairs)
        return [r.count("[") - 0.5 * len(re.findall(r"\[T", r)) for _, r in pairs], [None] * len(pairs)


def test_uct_and_recursive_mean_q():
    child = Node("c", local_avg_reward=2.0, visits=2, children=[Node("g", local_avg_reward=4.0, visits=1)])
    parent = Node("p", local_avg_reward=0.0, visits=5, children=[child])
    assert q_value(child) == 3.0  # mean(2, Q(g) = 4), not visit-weighted
    assert q_value(parent) == 1.5
    assert uct(child, parent, 0.1) == pytest.approx(3.0 + 0.1 * math.sqrt(math.log(5) / 2))


def test_max_backup_and_full_expansion_rule():
    leaf = Node("l", local_avg_reward=5.0)
    mid = Node("m", local_avg_reward=1.0, children=[leaf])
    root = Node("r", local_avg_reward=2.0, children=[mid])
    backup([root, mid, leaf])
    assert (root.visits, mid.visits, leaf.visits) == (1, 1, 1) and root.reward == mid.reward == 5.0
    assert select(root, n_actions=2, c=1.0) == [root]  # 1 of 2 actions used: not fully expanded
    assert select(root, n_actions=1, c=1.0) == [root, mid, leaf]  # every node on the chain is fully expanded


def test_search_shape_batching_unused_actions_and_raw_reward():
    engine, reward = ScriptedEngine(), CountingReward()
    trees = [Tree(seed_id=f"s{i}", raw=f"raw {i}", category=None, actions=mcts.action_set(None), root=Node(f"raw {i}"))
             for i in range(3)]
    search = Search(engine, reward=reward, responses=2)
    run_search(trees, search, iterations=5, c=0.1)
    assert engine.calls == [3, 3] * 5 + [3]  # one rewrite and one response call per iteration, all trees; roots last
    assert search.calls == {"rewrite": 5, "respond": 6, "reward": 6}
    for tree in trees:
        nodes = list(tree.root.walk())
        assert len(nodes) == 6 and tree.root.visits == 5 and tree.iteration == 5  # the reference: visits = iterations
        for node in nodes:
            actions = [c.action for c in node.children]
            assert len(actions) == len(set(actions)) <= 3  # no principle twice at a node
        assert {raw for raw, _ in reward.pairs if raw.startswith("raw")} >= {tree.raw}
    assert all(raw in {"raw 0", "raw 1", "raw 2"} for raw, _ in reward.pairs)  # always the RAW instruction
    root = trees[0].root
    assert len(root.children) == 3  # fully expanded first, then deeper
    best = max(root.children, key=lambda ch: uct(ch, root, 0.1))
    assert all(len(ch.children) == (2 if ch is best else 0) for ch in root.children)
    assert root.local_avg_reward is not None  # simulated once, after the loop, as in the reference
    assert root.reward == max(n.local_avg_reward for n in root.walk() if n is not root)  # the root's own value is not backed up


def test_failed_rewrites_are_retried_and_the_search_ends():
    engine = ScriptedEngine(fail={"Tone Improvement", "Clarification Request", "Information Augmentation"})
    tree = Tree(seed_id="s", raw="raw", category=None, actions=mcts.action_set(None), root=Node("raw"))
    run_search([tree], Search(engine, reward=CountingReward(), responses=1), iterations=3)
    assert tree.iteration == 0 and tree.failures == 3 and tree.root.children == []


def test_domain_action_sets():
    assert len(mcts.action_set(None)) == 3 and len(mcts.action_set("Math")) == 5 and len(mcts.action_set("Honesty")) == 4


def test_stage_saves_trees_every_iteration_and_resumes(tmp_path, monkeypatch):
    engine = ScriptedEngine()
    df = pl.DataFrame({"id": ["a", "b"], "source": "import", "meta": ['{"category": "Math"}', "{}"],
                       "messages": [[{"role": "user", "content": "Solve x+1=2"}], [{"role": "user", "content": "Hi there"}]]})
    monkeypatch.setattr(mcts, "reward_model", lambda engine, path: CountingReward())
    saved = []
    checkpoint = ShardState(tmp_path / "state-00000.json")
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda obj: (saved.append(json.dumps(obj)), real_save(obj)))
    out = mcts.search_stage(df, engine=engine, iterations=2, checkpoint=checkpoint)
    assert len(saved) == 3  # after each of 2 iterations and after the roots
    calls = len(engine.calls)
    again = mcts.search_stage(df, engine=engine, iterations=2, checkpoint=checkpoint)
    assert len(engine.calls) == calls  # finished trees are loaded, nothing is recomputed
    assert [json.loads(m)["mcts"]["tree"] for m in again["meta"]] == [json.loads(m)["mcts"]["tree"] for m in out["meta"]]
    tree = json.loads(out["meta"][0])["mcts"]["tree"]
    assert tree["actions"][-3:] == list(mcts.principles()["Helpfulness"]) and len(tree["actions"]) == 5


def tree_frame(tree: Tree) -> pl.DataFrame:
    return pl.DataFrame({"id": [tree.seed_id], "source": "mcts", "meta": [json.dumps({"mcts": {"tree": tree.to_dict()}})],
                         "messages": [[{"role": "user", "content": tree.raw}]]})


def hand_tree():
    good = Node("raw [Hint Addition]", action="Hint Addition", local_avg_reward=3.0)
    bad = Node("raw [Tone Improvement]", action="Tone Improvement", local_avg_reward=0.5)
    better = Node("raw [Tone Improvement] [Clarification Request]", action="Clarification Request", local_avg_reward=2.0)
    bad.children.append(better)
    return Tree(seed_id="t", raw="raw", category="Math", actions=mcts.action_set("Math"),
                root=Node("raw", local_avg_reward=1.0, children=[good, bad]))


def test_builders_pick_argmax_argmin_and_improving_edges():
    df = tree_frame(hand_tree())
    sft = mcts.sft_rows(df)
    assert sft["messages"][0].to_list()[1]["content"] == mcts.RESPONSE.format(optimized="raw [Hint Addition]")
    assert sft["messages"][0].to_list()[0]["content"] == mcts.PROMPT.format(raw="raw")
    dpo = mcts.dpo_rows(df)
    assert "raw [Hint Addition]" in dpo["chosen"][0].to_list()[1]["content"]
    assert "raw [Tone Improvement]\n" in dpo["rejected"][0].to_list()[1]["content"]  # the worst node, not the root
    steps = mcts.step_rows(df)
    assert steps.height == 2  # root->good (1 -> 3) and bad->better (0.5 -> 2); root->bad gets worse
    assert {json.loads(m)["mcts"]["principle"] for m in steps["meta"]} == {"Hint Addition", "Clarification Request"}
    assert steps["messages"][1].to_list()[0]["content"].endswith(mcts.STEP_SUFFIX.format(clause=mcts.clause("Clarification Request")))


def test_root_can_be_chosen_or_rejected_and_flat_trees_give_no_pair():
    tree = hand_tree()
    tree.root.local_avg_reward = 9.0
    assert mcts.sft_rows(tree_frame(tree))["messages"][0].to_list()[1]["content"] == mcts.RESPONSE.format(optimized="raw")
    flat = Tree(seed_id="f", raw="q", category=None, actions=[], root=Node("q", local_avg_reward=1.0))
    assert mcts.dpo_rows(tree_frame(flat)).height == 0
