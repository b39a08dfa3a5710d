"""UltraPrompt-style MCTS instruction search (P-Aligner, arXiv 2508.04626): nodes are instructions, actions
are rewrite principles, and a rewrite is rewarded by how well *responses to it* answer the *raw* seed
instruction, which keeps rewrites faithful to the original intent.

- selection: from the root, while a node is fully expanded (as many children as actions), move to the
  child maximising UCT = Q(child) + c * sqrt(ln N(parent) / N(child)), Q being the recursive mean of the
  reference code: Q(n) = mean([n.local_avg_reward] + [Q(child) for child in n.children]). Ties: first child.
- expansion: the optimizer rewrites the selected node's instruction following one *unused* principle,
  drawn at random (seeded per tree and iteration). A failed rewrite or evaluation adds nothing and the
  iteration is retried, up to `iterations` failures per tree.
- simulation: the responder samples n responses (default 3) to the rewrite; each is scored by the reward
  against the raw instruction; the node's value is their mean.
- backup: every node on the path gets visits += 1 and reward = max(children's reward, own value).

All trees advance in lockstep: each iteration is one batched rewrite call, one batched response call
and one batched scoring call across trees. Trees are written as JSON after every iteration, and a search
resumes from them.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from importlib import resources

import polars as pl

from pipeline.engines import Engine, Sampling, chat, failure_reason, raw_text_template
from pipeline.core.rundir import ShardState
from pipeline.core.records import dump_meta, first_instructions, meta_dicts, record_id, seed_of as _seed
from pipeline.score.reward import reward_model

HELPFULNESS = "Helpfulness"
DOMAIN_CATEGORIES = ("Math", "Coding & Debugging", "Honesty", "Harmlessness")
OPTIMIZER_SYSTEM = "You are an assistant who helps optimize user queries."
OPTIMIZER_USER = ("The user query to be paraphrased is [{query}]. You should optimize this query by {principle}. "
                  "You should also return the optimized version directly, without any prefix.")
BASE_TEMPLATE = "\n\n[User]\n{instruction}\n\n[Assistant]"  # the reference's plain template for a base responder
BASE_STOPS = ("[System]", "[User]", "[Assistant]")


def principles() -> dict[str, dict[str, str]]:
    """{domain: {principle name: clause}} from pipeline/synth/data/principles.json."""
    data = json.loads(resources.files("pipeline.synth").joinpath("data/principles.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def action_set(category: str | None) -> list[str]:
    """The principles a seed may use: its domain's plus Helpfulness, or Helpfulness alone."""
    table = principles()
    domains = [category, HELPFULNESS] if category in DOMAIN_CATEGORIES else [HELPFULNESS]
    return [name for domain in domains for name in table[domain]]


def clause(name: str) -> str:
    return next(v[name] for v in principles().values() if name in v)


@dataclass
class Node:
    instruction: str
    action: str | None = None
    visits: int = 0
    reward: float | None = None  # max-backup value
    local_avg_reward: float | None = None
    local_rewards: list = field(default_factory=list)
    local_responses: list = field(default_factory=list)
    children: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "Node":
        return cls(**{**d, "children": [cls.from_dict(c) for c in d.get("children", [])]})

    def walk(self):
        """Pre-order: the node, then its children's subtrees in creation order."""
        yield self
        for child in self.children:
            yield from child.walk()


def q_value(node: Node) -> float:
    """The reference's recursive mean: own value and each child's Q, equally weighted (not by visits)."""
    values = ([node.local_avg_reward] if node.local_avg_reward is not None else []) + [q_value(c) for c in node.children]
    return sum(values) / len(values) if values else 0.0


def uct(child: Node, parent: Node, c: float) -> float:
    return q_value(child) + c * math.sqrt(math.log(max(parent.visits, 1)) / max(child.visits, 1))


def select(root: Node, n_actions: int, c: float) -> list[Node]:
    """The path from the root to the first node that is not fully expanded."""
    path = [root]
    while len(path[-1].children) >= n_actions:
        parent = path[-1]
        path.append(max(parent.children, key=lambda child: uct(child, parent, c)))  # max keeps the first on ties
    return path


def backup(path: list[Node]) -> None:
    for node in reversed(path):
        node.visits += 1
        candidates = [c.reward for c in node.children if c.reward is not None]
        if node.local_avg_reward is not None:
            candidates.append(node.local_avg_reward)
        node.reward = max(candidates) if candidates else None


@dataclass
class Tree:
    seed_id: str
    raw: str
    category: str | None
    actions: list
    root: Node
    iteration: int = 0  # successful expansions so far
    failures: int = 0  # rewrites that failed (retried with a fresh draw; at most `iterations` in all)
    engine_error: str | None = None  # the first failed request (engine_error:<kind>): the row is dropped, redone on resume

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Tree":
        return cls(**{**d, "root": Node.from_dict(d["root"])})


def parse_rewrite(text: str | None) -> str | None:
    """The rewritten instruction from an optimizer reply; None if there is none.

    >>> parse_rewrite('Optimized query: "How do I cook rice?"')
    'How do I cook rice?'
    >>> parse_rewrite("[Explain recursion with an example.]")
    'Explain recursion with an example.'
    """
    if text is None:
        return None
    text = text.strip()
    for prefix in ("optimized query:", "optimized version:", "optimized prompt:", "the optimized query is:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):].strip()
    while len(text) >= 2 and text[0] + text[-1] in ('""', "''", "[]", "``"):
        text = text[1:-1].strip()
    return text or None


class Search:
    """The three roles of a search: optimizer (rewrites), responder (answers) and reward (judges vs raw)."""

    def __init__(self, engine: Engine, *, optimizer: Engine | None = None, responder: Engine | None = None,
                 reward_model_path: str | None = None, reward=None, responses: int = 3, response_max_tokens: int = 512,
                 rewrite_max_tokens: int = 512, responder_format: str = "chat"):
        self.optimizer = optimizer or engine
        self.responder = responder or engine
        self.reward = reward or reward_model(engine, reward_model_path)
        self.responses, self.response_max_tokens, self.rewrite_max_tokens = responses, response_max_tokens, rewrite_max_tokens
        if responder_format not in ("chat", "base"):
            raise ValueError(f"unknown responder_format {responder_format!r}; valid: ['chat', 'base']")
        self.responder_format = responder_format
        self.calls = {"rewrite": 0, "respond": 0, "reward": 0}

    def rewrite(self, items: list[tuple[str, str]], seeds: list[int]) -> tuple[list[str | None], list[str | None]]:
        """One batched optimizer call: (instruction, principle name) -> rewritten instruction or None (unparseable),
        and per item the engine_error of a failed request."""
        prompts = [chat(OPTIMIZER_USER.format(query=q, principle=clause(p)), system=OPTIMIZER_SYSTEM) for q, p in items]
        self.calls["rewrite"] += 1
        replies = self.optimizer.generate(prompts, Sampling(temperature=0.0, max_tokens=self.rewrite_max_tokens), seeds)
        return ([parse_rewrite(c[0].text) if not c[0].failed and c[0].finish_reason != "length" else None for c in replies],
                [failure_reason(c) for c in replies])

    def evaluate(self, instructions: list[str], raws: list[str], seeds: list[int]) -> list[tuple[list, list, str | None]]:
        """Responses to each instruction, their rewards judged against the matching *raw* instruction, and the
        engine_error of a failed request (response or reward) if any."""
        if self.responder_format == "chat":
            prompts, stop = [chat(q) for q in instructions], ()
        else:
            template = raw_text_template(self.responder, "the base responder's [User]/[Assistant] prompt")
            prompts = [template.bos_token + BASE_TEMPLATE.format(instruction=q) for q in instructions]
            stop = BASE_STOPS + ((template.eos_token,) if template.eos_token else ())
        self.calls["respond"] += 1
        groups = self.responder.generate(prompts, Sampling(n=self.responses, temperature=1.0, top_p=1.0,
                                                           max_tokens=self.response_max_tokens, stop=stop), seeds)
        texts = [[c.text.strip() for c in group if not c.failed] for group in groups]
        self.calls["reward"] += 1
        flat, flat_failures = self.reward.score([(raw, t) for raw, group in zip(raws, texts) for t in group])
        out, i = [], 0
        for group, replies in zip(texts, groups):
            rewards, failures = flat[i:i + len(group)], flat_failures[i:i + len(group)]
            i += len(group)
            out.append((group, rewards, failure_reason(replies) or next((f for f in failures if f), None)))
        return out


def _set_value(node: Node, responses: list, rewards: list) -> bool:
    valid = [r for r in rewards if r is not None]
    node.local_responses, node.local_rewards = responses, rewards
    node.local_avg_reward = sum(valid) / len(valid) if valid else None
    return node.local_avg_reward is not None


def run_search(trees: list[Tree], search: Search, *, iterations: int, c: float = 1.0,
               save: "callable | None" = None) -> list[Tree]:
    """Advance every tree to `iterations` expansions in lockstep, then evaluate the roots.

    As in the reference (online_synthesis/mcts_utils.py): the root is simulated once, after the loop, so during
    the search its visits count the iterations only and its `reward` is the best of its subtrees; its own value
    (local_avg_reward) is set afterwards, for the dataset builders, and changes neither. Every request is seeded,
    so evaluating the root last changes no other result.
    """
    while True:
        active = [t for t in trees if t.iteration < iterations and t.failures < iterations]
        if not active:
            break
        picks = []
        for tree in active:
            path = select(tree.root, len(tree.actions), c)
            used = {child.action for child in path[-1].children}
            unused = [a for a in tree.actions if a not in used]
            rng = random.Random(_seed(tree.seed_id, tree.iteration, tree.failures))
            picks.append((tree, path, rng.choice(unused)))
        rewrites, failures = search.rewrite([(p[-1].instruction, a) for _, p, a in picks],
                                            [_seed(t.seed_id, t.iteration, t.failures, "w") for t, _, _ in picks])
        for (tree, _, _), failure in zip(picks, failures):
            tree.engine_error = tree.engine_error or failure
        ok = [(pick, text) for pick, text in zip(picks, rewrites) if text]
        results = search.evaluate([text for _, text in ok], [pick[0].raw for pick, _ in ok],
                                  [_seed(pick[0].seed_id, pick[0].iteration, "r") for pick, _ in ok]) if ok else []
        added = set()
        for ((tree, path, action), text), (responses, rewards, failure) in zip(ok, results):
            tree.engine_error = tree.engine_error or failure
            child = Node(instruction=text, action=action)
            if _set_value(child, responses, rewards):  # a node whose rewards all failed is not added
                path[-1].children.append(child)
                backup(path + [child])
                added.add(id(tree))
        for tree, _, _ in picks:
            if id(tree) in added:
                tree.iteration += 1
            else:  # the reference aborts the iteration and retries it; the cap keeps every search finite
                tree.failures += 1
        if save:
            save(trees)
    roots = [t for t in trees if t.root.local_avg_reward is None]
    if roots:
        results = search.evaluate([t.raw for t in roots], [t.raw for t in roots], [_seed(t.seed_id, "root") for t in roots])
        for tree, (responses, rewards, failure) in zip(roots, results):
            tree.engine_error = tree.engine_error or failure
            _set_value(tree.root, responses, rewards)
        if save:
            save(trees)
    return trees


def search_stage(df: pl.DataFrame, *, engine: Engine, checkpoint: ShardState, iterations: int = 20,
                 exploration: float = 1.0, optimizer: Engine | None = None, responder: Engine | None = None,
                 reward_model_path: str | None = None, responses: int = 3, response_max_tokens: int = 512,
                 responder_format: str = "chat") -> pl.DataFrame:
    """Stage: one MCTS tree per seed row (its first user turn; `meta.category` picks the actions); the tree
    goes to `meta.mcts.tree`. Trees are saved to `checkpoint` after every iteration and resumed from it. A tree
    that met a failed request is dropped as engine_error:<kind> (its search would be skewed) and searched anew
    when the shard is resumed."""
    metas = meta_dicts(df)
    seeds = first_instructions(df)
    fresh = [Tree(seed_id=rid, raw=raw, category=meta.get("category"), actions=action_set(meta.get("category")),
                  root=Node(instruction=raw)) for rid, raw, meta in zip(df["id"].to_list(), seeds, metas)]
    saved = checkpoint.load()
    trees = [new if old.engine_error else old for new, old in zip(fresh, map(Tree.from_dict, saved))] if saved else fresh
    search = Search(engine, optimizer=optimizer, responder=responder, reward_model_path=reward_model_path,
                    responses=responses, response_max_tokens=response_max_tokens, responder_format=responder_format)
    run_search(trees, search, iterations=iterations, c=exploration, save=lambda ts: checkpoint.save([t.to_dict() for t in ts]))
    for meta, tree in zip(metas, trees):
        meta["mcts"] = {"tree": tree.to_dict(), "exploration": exploration, "iterations": iterations}  # nothing per shard
    return df.with_columns(dump_meta(metas), pl.Series("drop_reason", [t.engine_error for t in trees], dtype=pl.String))


# --- datasets from trees -------------------------------------------------------------------------------

PROMPT = ("You are an expert prompt engineer. Please help me optimize this prompt to get better response:\n\n"
          "[The Start of Raw Prompt]\n{raw}\n[The End of Raw Prompt]")
STEP_SUFFIX = "\n\nYou should optimize this prompt by {clause}"
RESPONSE = "The Optimized Prompt:\n\n[The Start of Optimized Prompt]\n{optimized}\n[The End of Optimized Prompt]"


def best_and_worst(tree: Tree) -> tuple[Node, Node]:
    """The nodes with the highest and lowest value (root included); ties keep pre-order (first found)."""
    nodes = [n for n in tree.root.walk() if n.local_avg_reward is not None]
    best = max(nodes, key=lambda n: n.local_avg_reward)
    worst = min(nodes, key=lambda n: n.local_avg_reward)
    return best, worst


def _trees(df: pl.DataFrame) -> list[tuple[str, Tree]]:
    return [(rid, Tree.from_dict(m["mcts"]["tree"])) for rid, m in zip(df["id"].to_list(), meta_dicts(df))]


def _conversation(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _frame(rows: list[dict], source: str) -> pl.DataFrame:
    from pipeline.core.records import empty

    conversation = empty().schema["messages"]
    return pl.DataFrame({
        "id": [r["id"] for r in rows], "parent_id": [r["parent"] for r in rows], "source": [source] * len(rows),
        "messages": pl.Series([r.get("messages") for r in rows], dtype=conversation),
        "chosen": pl.Series([r.get("chosen") for r in rows], dtype=conversation),
        "rejected": pl.Series([r.get("rejected") for r in rows], dtype=conversation),
    }, schema_overrides={"parent_id": pl.String}).with_columns(dump_meta([r["meta"] for r in rows]))


def sft_rows(df: pl.DataFrame, *, prompt: str = PROMPT, response: str = RESPONSE) -> pl.DataFrame:
    """Stage: P-Aligner SFT rows, raw instruction -> best node's instruction (the raw one if the root is best)."""
    rows = []
    for rid, tree in _trees(df):
        best, _ = best_and_worst(tree)
        rows.append({"id": record_id("mcts-sft", rid), "parent": rid,
                     "messages": _conversation(prompt.format(raw=tree.raw), response.format(optimized=best.instruction)),
                     "meta": {"mcts": {"best_value": best.local_avg_reward, "best_action": best.action,
                                       "root_value": tree.root.local_avg_reward}}})
    return _frame(rows, "mcts")


def dpo_rows(df: pl.DataFrame, *, prompt: str = PROMPT, response: str = RESPONSE) -> pl.DataFrame:
    """Stage: best node vs worst node (root allowed) for each tree; trees whose values are all equal give none."""
    rows = []
    for rid, tree in _trees(df):
        best, worst = best_and_worst(tree)
        if best.local_avg_reward == worst.local_avg_reward:
            continue
        user = prompt.format(raw=tree.raw)
        rows.append({"id": record_id("mcts-dpo", rid), "parent": rid,
                     "chosen": _conversation(user, response.format(optimized=best.instruction)),
                     "rejected": _conversation(user, response.format(optimized=worst.instruction)),
                     "meta": {"mcts": {"chosen_value": best.local_avg_reward, "rejected_value": worst.local_avg_reward}}})
    return _frame(rows, "mcts")


def step_rows(df: pl.DataFrame, *, prompt: str = PROMPT, response: str = RESPONSE) -> pl.DataFrame:
    """Stage: SinglePO rows, one per improving edge (child value > parent value), with its principle."""
    rows = []
    for rid, tree in _trees(df):
        for parent in tree.root.walk():
            for child in parent.children:
                if (parent.local_avg_reward is not None and child.local_avg_reward is not None
                        and child.local_avg_reward > parent.local_avg_reward):
                    user = prompt.format(raw=parent.instruction) + STEP_SUFFIX.format(clause=clause(child.action))
                    rows.append({"id": record_id("mcts-step", rid, parent.instruction, child.instruction), "parent": rid,
                                 "messages": _conversation(user, response.format(optimized=child.instruction)),
                                 "meta": {"mcts": {"principle": child.action, "gain": child.local_avg_reward - parent.local_avg_reward}}})
    return _frame(rows, "mcts")
