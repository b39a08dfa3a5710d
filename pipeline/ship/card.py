"""Dataset cards: a run's funnel, models, sampling, seeds, lineage and citations, rendered from
data_cards/dataset_card.md.jinja with huggingface_hub's DatasetCard (valid YAML metadata). Secrets are
redacted from everything the card shows."""
from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import polars as pl

from pipeline.core.rundir import read_manifest, write_atomic
from pipeline.ship import reasoning_card
from pipeline.engines.usage import PRICES_DATE, PRICES_SOURCE
from pipeline.core.secrets import redact
from pipeline.score.embed import describe_embedder
from pipeline.score.safety import card_note

TEMPLATE = Path(__file__).resolve().parents[2] / "data_cards" / "dataset_card.md.jinja"
METHOD_OF_MODULE = {"pipeline.synth.magpie": "magpie", "pipeline.score.tags": "magpie", "pipeline.select.magpie_presets": "magpie",
                    "pipeline.score.deita": "deita", "pipeline.select.selection": "deita", "pipeline.synth.mcts": "p-aligner",
                    "pipeline.synth.codeclm": "codeclm", "pipeline.select.isa": "isa", "pipeline.score.ifd": "ifd",
                    "pipeline.score.bleu": "bleuberi", "pipeline.synth.feedback": "wildfeedback",
                    "pipeline.synth.honesty": "honesty", "pipeline.select.moi": "moi", "pipeline.select.bleuberi": "bleuberi", "pipeline.select.audit": "audit",
                    "pipeline.synth.isheep": "isheep", "pipeline.synth.guide_align": "guide-align",
                    "pipeline.select.guide_library": "guide-align", "pipeline.synth.urial_answers": "urial",
                    "pipeline.synth.distill": "r1-distill", "pipeline.select.difficulty": "s1", "pipeline.synth.tools": "apigen"}
METHOD_OF_FILTER = {"single_length_requirement": "long-output", "length_score_at_least": "long-output"}
# The papers' pages: the card's only links, to things that exist.
PAPERS = {"magpie": "https://arxiv.org/abs/2406.08464", "deita": "https://arxiv.org/abs/2312.15685",
          "p-aligner": "https://arxiv.org/abs/2508.04626", "codeclm": "https://arxiv.org/abs/2404.05875",
          "isa": "https://arxiv.org/abs/2411.10545", "ifd": "https://arxiv.org/abs/2308.12032",
          "long-output": "https://arxiv.org/abs/2410.10210", "bleuberi": "https://arxiv.org/abs/2505.11080",
          "audit": "https://arxiv.org/abs/2510.18554", "wildfeedback": "https://arxiv.org/abs/2408.15549",
          "honesty": "https://arxiv.org/abs/2312.07000", "moi": "https://arxiv.org/abs/2404.18410",
          "isheep": "https://arxiv.org/abs/2408.08072", "guide-align": "https://arxiv.org/abs/2403.11838",
          "urial": "https://arxiv.org/abs/2312.01552", "r1-distill": "https://arxiv.org/abs/2501.12948",
          "s1": "https://arxiv.org/abs/2501.19393", "apigen": "https://arxiv.org/abs/2406.18518"}
CITATIONS = {
    "magpie": "@inproceedings{xu2025magpie,\n  title={Magpie: Alignment Data Synthesis from Scratch by Prompting Aligned LLMs with Nothing},\n"
              "  author={Xu, Zhangchen and Jiang, Fengqing and Niu, Luyao and Deng, Yuntian and Poovendran, Radha and Choi, Yejin and Lin, Bill Yuchen},\n"
              "  booktitle={ICLR}, year={2025}}",
    "deita": "@inproceedings{liu2024deita,\n  title={What Makes Good Data for Alignment? A Comprehensive Study of Automatic Data Selection in Instruction Tuning},\n"
             "  author={Liu, Wei and Zeng, Weihao and He, Keqing and Jiang, Yong and He, Junxian},\n  booktitle={ICLR}, year={2024}}",
    "p-aligner": "@article{song2025paligner,\n  title={P-Aligner: Enabling Pre-Alignment of Language Models via Principled Instruction Synthesis},\n"
                 "  journal={arXiv preprint arXiv:2508.04626}, year={2025}}",
    "codeclm": "@inproceedings{wang2024codeclm,\n  title={CodecLM: Aligning Language Models with Tailored Synthetic Data},\n"
               "  booktitle={Findings of NAACL}, year={2024}}",
    "isa": "@article{khera2024efficient,\n  title={Efficient Alignment of Large Language Models via Data Sampling},\n"
           "  author={Khera, Amrit and Ghosh, Rajat and Dutta, Debojyoti},\n  journal={arXiv preprint arXiv:2411.10545}, year={2024}}",
    "long-output": "@article{longoutput2024minimum,\n  title={Minimum Tuning to Unlock Long Output from LLMs with High Quality Data as the Key},\n"
                   "  journal={arXiv preprint arXiv:2410.10210}, year={2024}}",
    "bleuberi": "@article{chang2025bleuberi,\n  title={BLEUBERI: BLEU is a surprisingly effective reward for instruction following},\n"
                "  journal={arXiv preprint arXiv:2505.11080}, year={2025}}",
    "wildfeedback": "@article{shi2024wildfeedback,\n  title={WildFeedback: Aligning LLMs With In-situ User Interactions And Feedback},\n"
                    "  journal={arXiv preprint arXiv:2408.15549}, year={2024}}",
    "honesty": "@article{yang2023alignment,\n  title={Alignment for Honesty},\n  journal={arXiv preprint arXiv:2312.07000}, year={2023}}",
    "moi": "@article{lu2024moi,\n  title={Mixture-of-Instructions: Comprehensive Alignment of a Large Language Model through the Mixture of Diverse System Prompting Instructions},\n"
           "  journal={arXiv preprint arXiv:2404.18410}, year={2024}}",
    "isheep": "@article{liang2024isheep,\n  title={I-SHEEP: Self-Alignment of LLM from Scratch through an Iterative Self-Enhancement Paradigm},\n"
              "  journal={arXiv preprint arXiv:2408.08072}, year={2024}}",
    "guide-align": "@article{luo2024guidealign,\n  title={Ensuring Safe and High-Quality Outputs: A Guideline Library Approach for Language Models},\n"
                   "  journal={arXiv preprint arXiv:2403.11838}, year={2024}}",
    "urial": "@inproceedings{lin2024unlocking,\n  title={The Unlocking Spell on Base LLMs: Rethinking Alignment via In-Context Learning},\n"
             "  booktitle={ICLR}, year={2024}}",
    "audit": "@article{barbero2025extracting,\n  title={Extracting alignment data in open models},\n"
             "  journal={arXiv preprint arXiv:2510.18554}, year={2025}}",
    "r1-distill": "@article{deepseek2025r1,\n  title={DeepSeek-R1: Incentivizing Reasoning Capability in LLMs via Reinforcement Learning},\n"
                  "  author={{DeepSeek-AI}},\n  journal={arXiv preprint arXiv:2501.12948}, year={2025}}",
    "s1": "@article{muennighoff2025s1,\n  title={s1: Simple test-time scaling},\n"
          "  author={Muennighoff, Niklas and Yang, Zitong and Shi, Weijia and Li, Xiang Lisa and Fei-Fei, Li and Hajishirzi, Hannaneh and Zettlemoyer, Luke and Liang, Percy and Cand{\\`e}s, Emmanuel and Hashimoto, Tatsunori},\n"
          "  journal={arXiv preprint arXiv:2501.19393}, year={2025}}",
    "apigen": "@inproceedings{liu2024apigen,\n  title={APIGen: Automated Pipeline for Generating Verifiable and Diverse Function-Calling Datasets},\n"
              "  booktitle={NeurIPS Datasets and Benchmarks}, year={2024}}",
    "ifd": "@inproceedings{li2024quantity,\n  title={From Quantity to Quality: Boosting LLM Performance with Self-Guided Data Selection for Instruction Tuning},\n"
           "  booktitle={NAACL}, year={2024}}",
}


def _filter_param(stages: list[dict], name: str, param: str, default):
    """A parameter of filter `name` in the run's filter steps, or `default`."""
    for stage in stages:
        for item in stage.get("params", {}).get("spec", []) if stage.get("function") == "filters.mark" else []:
            if isinstance(item, dict) and item.get("name") == name and param in item:
                return item[param]
    return default


def size_category(n: int) -> str:
    """The Hub's size bucket.

    >>> size_category(16), size_category(2500), size_category(300_000)
    ('n<1K', '1K<n<10K', '100K<n<1M')
    """
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "n>10M"


def context(run_dir: Path, export: Path | None = None) -> dict:
    """What a card shows, from the run's manifest, its stages' stage.json and its export."""
    from pipeline.core.rundir import summarize

    run_dir = Path(run_dir)
    export = export or run_dir / "export" / "data.parquet"
    funnel = summarize(run_dir)["stages"]
    stages = [json.loads((run_dir / name / "stage.json").read_text()) for name in funnel]
    models = [{"stage": s["stage"] + (f" ({role})" if role else ""), "backend": e["backend"], "model": e["model"],
               "revision": e.get("revision"),
               "params": json.dumps(s.get("params", {}), sort_keys=True)}
              for s in stages for role, e in [(None, s.get("engine")), *s.get("engines", {}).items()] if e]
    filter_steps = [{"stage": s["stage"], "spec": ", ".join(_filter_text(f) for f in s["params"]["spec"])}
                    for s in stages if s.get("function") == "filters.mark"]
    methods = list(dict.fromkeys([METHOD_OF_MODULE[m] for s in stages
                                  if (m := s.get("function", "").rsplit(".", 1)[0]) in METHOD_OF_MODULE] +
                                 [METHOD_OF_FILTER[name] for s in stages if s.get("function") == "filters.mark"
                                  for item in s["params"]["spec"]
                                  if (name := item if isinstance(item, str) else item["name"]) in METHOD_OF_FILTER]))
    df = pl.read_parquet(export)
    languages = sorted(set(df["language"].drop_nulls().str.to_lowercase())) if "language" in df.columns else []
    metas = [json.loads(m) for m in df["meta"].head(1000)]
    seeds = sorted({str(m.get("magpie", {}).get("seed")) for m in metas} - {"None"})
    origins = sorted({turn["user"]["pre_query"] for m in metas for turn in m.get("magpie", {}).get("turns", [])
                      if turn.get("user", {}).get("pre_query")})
    notes = [f"Magpie pre-query prefix: {origin} ("
             + ("from the model's chat template)" if origin == "template" else "the official registry's, which agrees "
                "with the model's chat template)") for origin in origins]
    notes += [f"{s['stage']}: embeddings are {describe_embedder(s['params'].get('embedder', 'minilm'), s['params'].get('field', 'instruction'))}"
              for s in stages if s.get("function") == "pipeline.score.embed.embed"]
    if any(s.get("function") == "pipeline.synth.feedback.classify" for s in stages):
        from pipeline.synth.feedback import RUBRIC

        notes.append(f"WildFeedback's SAT/DSAT rubric, in our words: {RUBRIC}")
    notes += [f"{s['stage']}: I-SHEEP self-assessment by the generating model itself, two 1-10 ratings (quality; "
              f"instruction following) read as the reference reads them; kept when both are at least {_filter_param(stages, 'self_assessed_at_least', 'min_score', 9)}"
              for s in stages if s.get("function") == "pipeline.synth.isheep.self_assess"]
    notes += reasoning_card.notes(run_dir)
    notes += [f"{s['stage']}: {card_note(s.get('params', {}))}" for s in stages
              if s.get("function") == "pipeline.score.safety.check"]
    notes += sorted({f"{e['stage']}: {w}" for e in read_manifest(run_dir) for w in e.get("warnings", [])})
    usage = [{"stage": stage, "model": model, "backend": t["backend"], "requests": t.get("requests", 0),
              "prompt_tokens": t.get("prompt_tokens", 0) + t.get("batch_prompt_tokens", 0),
              "completion_tokens": t.get("completion_tokens", 0) + t.get("batch_completion_tokens", 0),
              "batch": "yes" if t.get("batch_prompt_tokens") else "no",
              "cost": "-" if t.get("cost_usd") is None else f"{t['cost_usd']:.4f}"}
             for stage, s in funnel.items() for model, t in s.get("tokens", {}).items()]
    return {"funnel": [{"stage": stage["stage"], "code": stage.get("code", ""), "rows_in": s["rows_in"], "rows_out": s["rows_out"],
                        "drops": ", ".join(f"{k}: {v}" for k, v in sorted(s["drops"].items()))}
                       for stage, s in zip(stages, funnel.values())],
            "usage": usage, "prices": f"{PRICES_DATE} list prices ({PRICES_SOURCE}) unless a --prices file was given",
            "models": models, "filters": filter_steps, "notes": notes, "methods": methods, "rows": df.height, "languages": languages or ["en"],
            "seeds": ", ".join(seeds) if seeds else "see each row's meta", "pii": pii_section(run_dir, export)}


def pii_section(run_dir: Path, export: Path) -> dict:
    """The card's "Personal data" section: the run's scrub status and, per type, values found, action, rows dropped."""
    from pipeline.select.pii import TYPES
    from pipeline.ship import scrubbing

    pii = scrubbing.summary(run_dir, export)
    types = [{"type": t, "found": pii["found"].get(t, 0), "action": pii["actions"].get(t, "-"),
              "dropped": pii["dropped"].get(t, 0)} for t in TYPES]
    return {"status": pii["status"], "passes": pii["passes"], "dropped": sum(pii["dropped"].values()), "types": types}


def _filter_text(item) -> str:
    """A filter spec item as the card lists it: `name(param=value, ...)`.

    >>> _filter_text({"name": "instruction_words_at_least", "min_words": 3})
    'instruction_words_at_least(min_words=3)'
    """
    if isinstance(item, str):
        return item
    params = ", ".join(f"{k}={v}" for k, v in item.items() if k != "name")
    return f"{item['name']}({params})"


def render(ctx: dict, *, pretty_name: str, description: str, license: str = "other") -> str:
    """The card's text: YAML metadata (license, languages, task category, size, configs, tags) and the body."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        license=license, language=ctx["languages"], task_categories=["text-generation"],
        size_categories=[size_category(ctx["rows"])], pretty_name=pretty_name,
        tags=["synthetic", "alignment", "aligndata", *ctx["methods"]],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    )
    aligndata_version = ctx.get("aligndata_version") or _version()
    card = DatasetCard.from_template(
        data, template_path=str(TEMPLATE), pretty_name=pretty_name, description=description,
        aligndata_version=aligndata_version, method_links=[(m, PAPERS.get(m)) for m in ctx["methods"] or ["curation"]],
        rows=ctx["rows"],
        split_note="one split, train", funnel=ctx["funnel"], models=ctx["models"], filters=ctx.get("filters", []), notes=ctx.get("notes", []), seeds=ctx["seeds"],
        usage=ctx.get("usage", []), prices=ctx.get("prices", ""), pii=ctx.get("pii"),
        citations=[CITATIONS[m] for m in ctx["methods"]])
    return redact(str(card))


def _version() -> str:
    try:
        return version("aligndata")
    except PackageNotFoundError:
        return "(source)"


def write(run_dir: Path, out: Path, *, pretty_name: str, description: str = "", license: str = "other") -> Path:
    """Render the card for `run_dir` and write it atomically to `out` (the export's README.md); a card that says
    what the file says already is not rewritten."""
    text = render(context(run_dir), pretty_name=pretty_name, description=description, license=license)
    out = Path(out)
    if out.exists() and out.read_text() == text:
        return out
    return write_atomic(out, lambda tmp: Path(tmp).write_text(text))
