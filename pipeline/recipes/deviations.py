"""Where our defaults differ from a paper or its reference code: one table, built from the code's own constants and
signatures so that it cannot drift from what runs. The README embeds it (tests/test_deviations.py checks the two
agree); `python -m pipeline.recipes.deviations` prints it, `--write README.md` updates the README's copy.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

START, END = "<!-- deviations:start -->", "<!-- deviations:end -->"


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


def rows() -> list[tuple[str, str, str, str, str]]:
    """(method, setting, paper / reference code, ours, why) per deviation."""
    from pipeline.recipes.curate import curate_steps
    from pipeline.recipes.selfalign import guided_step
    from pipeline.ship.train import LoraSettings
    from pipeline.synth.guide_align import THRESHOLD as GUIDE_THRESHOLD
    from pipeline.recipes.magpie import CPU_PROFILE
    from pipeline.recipes.mcts import mcts_search_step
    from pipeline.recipes.tag import tag_steps
    from pipeline.select.neighbours import NEIGHBOURS
    from pipeline.score.embed import DEITA_MODEL
    from pipeline.synth import magpie
    from pipeline.synth.magpie_logits import FIRST_TOKEN_PROCESSORS

    cpu = CPU_PROFILE
    return [
        ("Magpie", "instruction / response max tokens, `cpu` profile",
         f"{magpie.PAPER_INSTRUCTION_MAX_TOKENS} / {magpie.PAPER_RESPONSE_MAX_TOKENS} (`gen_ins.py`, `gen_res.py`; "
         "Llama-3.1/3.3 scripts: 1024 instruction tokens)",
         f"{cpu['instruction_max_tokens']} / {cpu['response_max_tokens']}; the official values with `--profile paper`, "
         "which `auto` picks for registry models",
         "a 135M model on a CPU loops for minutes per row at 4096 tokens; rows that hit the cap are dropped as incomplete"),
        ("Magpie", "response sampling, `cpu` profile", "greedy (Llama-3.1 scripts: T 0.6, top-p 0.9)",
         f"T {cpu['response_temperature']}, top-p {cpu['response_top_p']}",
         "greedy SmolLM2-135M repeats itself until the token limit on most prompts"),
        ("Magpie", "instruction temperature, models without an official entry",
         "per script: 1.0 (Llama-3, Qwen2, Phi-3, Mistral), 0.7 (Qwen2.5-3B/7B), 0.6 (Qwen2.5-32B/72B)",
         f"{magpie.DERIVED_INSTRUCTION_TEMPERATURE}", "the official setting for small models; these models are small"),
        ("Magpie", "first-token logits processors",
         "Llama-3.1 scripts: de-markdown; Qwen2.5-Math: flaming tokens (vLLM V0 per-request processors)",
         "on for those families (" + ", ".join(f"{f}: {p}" for f, p in sorted(FIRST_TOKEN_PROCESSORS.items())) +
         "), through vLLM V1's logits-processor interface and llama.cpp's", "same effect, the supported interfaces"),
        ("Magpie", "min-neighbour distance: embedder, search",
         "all-mpnet-base-v2; the 500 nearest neighbours of each row (faiss flat L2)",
         f"`--embedder` (default {_default(tag_steps, 'embedder')}: all-MiniLM-L6-v2); the {NEIGHBOURS} nearest "
         "(flat up to 200k rows, IVF nprobe 8 above)",
         "MiniLM ships offline; the 0.05 threshold was set with mpnet, so check it for another embedder; a flat "
         "search of millions of rows takes hours"),
        ("deita", "Repr Filter embeddings",
         "a causal LM's last-token state over the whole conversation (paper: LLaMA-1 13B; code default Mistral-7B)",
         f"`--embedder` (default {_default(curate_steps, 'embedder')}: MiniLM of the first user turn); "
         f"`--embedder deita[:<model>]` is the paper's (default {DEITA_MODEL})",
         f"offline default; tau = {_default(curate_steps, 'tau')} was tuned on causal-LM vectors, which are "
         "anisotropic: set tau per embedder"),
        ("deita", "inputs longer than the scorer's context (2048 tokens)",
         "not cut: the transformers path runs past the model's positions, the vLLM path has the request refused and "
         "scores 3.0", "the response (complexity: the instruction) cut from its end until the prompt fits, the label "
         "line kept; noted in the card", "a default score is not a score; a refused request would drop the row"),
        ("deita", "order of equal scores", "pandas quicksort (not stable)", "stable: ties keep row order",
         "reproducible selections"),
        ("P-Aligner MCTS", "exploration constant c", "0.1 (released scripts; `config.py`: 1.0)",
         f"{_default(mcts_search_step, 'exploration')} (`--exploration`)", "the config's value; pass 0.1 for the scripts'"),
        ("P-Aligner MCTS", "optimizer, responder, reward",
         "GPT-4 rewrites; base Llama-3.1-8B answers (`[User]`/`[Assistant]`, n = 3, T 1.0); ArmoRM scores",
         f"the job's engine for all three (n = {_default(mcts_search_step, 'responses')}; `--responder-format base` "
         "for the reference's template; the engine as a 1-9 judge unless `--reward-model`)",
         "offline on one model; every role can be given its own model"),
        ("BLEUBERI", "BLEU implementation", "HF `evaluate` BLEU, smooth=True (add-one on every order; shortest "
         "reference length)", "sacrebleu sentence BLEU, 13a, add-one smoothing from bigrams on, closest reference length, "
         "in [0, 1]", "evaluate downloads its BLEU script from the Hub at run time; aligndata runs offline"),
        ("URIAL", "decoding", "greedy with repetition penalty 1.15 (MT-Bench scripts)",
         "greedy, no repetition penalty", "no engine of ours exposes a repetition penalty yet"),
        ("WildFeedback", "DSAT turns mined per conversation", "not stated in what we read",
         "the first DSAT turn of each conversation", "one pair per conversation; its prompt never contains another "
         "dissatisfied exchange"),
        ("CodecLM", "prompts", "the paper's figures (no official code)", "our wording of them",
         "no reference text to copy"),
        ("I-SHEEP", "new tasks per request", "up to 16 parsed from one completion (stop at '17')",
         "one (stop at `###`), with its own seed", "every row seeded on its own: results do not depend on batching"),
        ("I-SHEEP", "answers", "a raw continuation of `{instruction}{input}\\n`",
         "through the model's chat template (self-assessment stays a raw continuation, as the reference's)",
         "the pairs train a chat model"),
        ("I-SHEEP", "training step", "LLaMA-Factory LoRA (DeepSpeed), 2 epochs, merged by its export",
         f"TRL SFTTrainer + PEFT LoRA (r {LoraSettings.rank}, alpha {LoraSettings.alpha}, lr {LoraSettings.learning_rate}, "
         f"{LoraSettings.epochs:g} epochs), merged; `--train-steps` caps it", "the trainer our exports target; a pluggable hook"),
        ("Guide-Align", "retrieval", "a trained lightweight retrieval model", f"the sentence embedder and exact faiss top-k "
         f"(default k {_default(guided_step, 'k')}); library dedup at cosine > {GUIDE_THRESHOLD}",
         "no published retriever to load; an embedder needs no training data"),
    ]


def markdown() -> str:
    """The table as the README shows it."""
    lines = ["| method | setting | paper / reference code | ours | why |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows()]
    return "\n".join(lines) + "\n"


def in_readme(text: str) -> str:
    """The copy of the table between the README's markers."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write(readme: Path) -> None:
    """Replace the README's copy of the table with the current one."""
    text = readme.read_text()
    head, rest = text.split(START, 1)
    readme.write_text(head + START + "\n" + markdown() + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]))
    else:
        print(markdown(), end="")
