"""Trainer-ready exports of a record table: TRL (conversational SFT `messages`; preference `prompt`/`chosen`/
`rejected`), LLaMA-Factory (ShareGPT JSON + `dataset_info.json`), axolotl (a `chat_template` dataset
config) and HF `datasets` directories. Every file is written atomically.

Rows with `chosen` and `rejected` are preference rows; the others are SFT rows (`messages`).

Reasoning and tool calls, per format: TRL and HF write messages as the chat templates of transformers read them, the
reasoning as `reasoning_content` (Qwen3's, DeepSeek-R1's and TRL's name; templates without it ignore it), `tool_calls`
(arguments as JSON text, which Qwen3's template and OpenAI's API take) and tool turns with `tool_call_id`, plus a
`tools` column of one JSON string, which TRL's SFTTrainer parses and passes to `apply_chat_template(tools=...)`.
LLaMA-Factory gets its thinking format (the reasoning as a `<think>` block at the start of the `gpt` value, which its
reasoning templates split off), `function_call` turns (the call, or a list of parallel calls, as JSON), one
`observation` turn per group of results, and a `tools` column named in `dataset_info.json`. axolotl reads the TRL
file with the extra message properties mapped and `field_tools`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl

from pipeline.core.messages import with_reasoning
from pipeline.core.records import compact
from pipeline.core.rundir import write_atomic, write_json

FORMATS = ("trl", "llamafactory", "axolotl", "hf")
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def split(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(SFT rows, preference rows)."""
    preference = pl.col("chosen").is_not_null() & pl.col("rejected").is_not_null() if "chosen" in df.columns else pl.lit(False)
    return df.filter(~preference & pl.col("messages").list.len().gt(0)), df.filter(preference)


def for_templates(df: pl.DataFrame, column: str) -> pl.Expr:
    """`column`'s messages as chat templates read them: `reasoning` named `reasoning_content`."""
    inner = df.schema[column].inner
    if not isinstance(inner, pl.Struct):
        return pl.col(column)
    names = [{"reasoning": "reasoning_content"}.get(f.name, f.name) for f in inner.fields]
    return pl.col(column).list.eval(pl.element().struct.rename_fields(names))


def tools_json(df: pl.DataFrame) -> pl.Expr:
    """Each row's tools as one JSON string of a list (what TRL's SFTTrainer json.loads), null when it has none."""
    tools = pl.col("tools") if "tools" in df.columns else pl.lit(None, dtype=pl.List(pl.String))
    return (pl.lit("[") + tools.list.join(", ") + pl.lit("]")).alias("tools")


def _has(df: pl.DataFrame, column: str) -> bool:
    return column in df.columns and df[column].drop_nulls().len() > 0


def trl_sft(df: pl.DataFrame) -> pl.DataFrame:
    """TRL's conversational language-modeling format: a `messages` column (and `tools` when a row has tools)."""
    out = df.select("id", for_templates(df, "messages"))
    return out.with_columns(df.select(tools_json(df))) if _has(df, "tools") else out


def trl_preference(df: pl.DataFrame) -> pl.DataFrame:
    """TRL's conversational preference format: `prompt` = the turns before the answer, `chosen`/`rejected` = the
    final assistant turn of each side (the two sides must share that prompt)."""
    prompts, chosen, rejected = [], [], []
    for c, r in zip(df["chosen"].to_list(), df["rejected"].to_list()):
        if c[:-1] != r[:-1] or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
            raise ValueError("a preference row's chosen and rejected must share their prompt turns and end with an "
                             f"assistant turn; got {c[:-1]!r} vs {r[:-1]!r}")
        prompts.append(c[:-1])
        chosen.append(c[-1:])
        rejected.append(r[-1:])
    conversation = df.schema["chosen"]
    pairs = pl.DataFrame({"id": df["id"], "prompt": pl.Series(prompts, dtype=conversation),
                          "chosen": pl.Series(chosen, dtype=conversation), "rejected": pl.Series(rejected, dtype=conversation)})
    return pairs.with_columns(for_templates(pairs, c) for c in ("prompt", "chosen", "rejected"))


def _sharegpt(conversation: list[dict]) -> list[dict]:
    """ShareGPT turns as LLaMA-Factory reads them: reasoning as a leading <think> block, calls as `function_call`
    turns, each group of tool results as one `observation` (a JSON list when there are several)."""
    turns: list[dict] = []
    for m in compact(conversation):
        m = {**m, "reasoning": m.get("reasoning", m.get("reasoning_content"))}
        if m["role"] == "assistant" and m.get("tool_calls"):
            if m.get("reasoning") or m.get("content"):
                turns.append({"from": "gpt", "value": with_reasoning(m.get("content", ""), m.get("reasoning"))})
            calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in m["tool_calls"]]
            turns.append({"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)})
        elif m["role"] == "tool" and turns and turns[-1]["from"] == "observation":
            results = turns[-1].setdefault("_results", [turns[-1]["value"]])
            results.append(m["content"])
            turns[-1]["value"] = json.dumps(results, ensure_ascii=False)
        else:
            text = with_reasoning(m["content"], m.get("reasoning")) if m["role"] == "assistant" else m["content"]
            turns.append({"from": SHAREGPT_ROLE[m["role"]], "value": text})
    return [{k: v for k, v in t.items() if k != "_results"} for t in turns]


def _write_jsonl(rows: list[dict], path: Path) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)))


def export(df: pl.DataFrame, out: Path, fmt: str, *, name: str = "aligndata") -> dict[str, str]:
    """Write `df` in `fmt` under `out`; returns {what: path}."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {list(FORMATS)}")
    out = Path(out)
    sft, preference = split(df)
    written: dict[str, str] = {}
    if fmt in ("trl", "axolotl") and sft.height:
        written["sft"] = str(write_atomic(out / "sft.parquet", lambda tmp: trl_sft(sft).write_parquet(tmp)))
    if fmt == "trl":
        if preference.height:
            written["preference"] = str(write_atomic(out / "preference.parquet", lambda tmp: trl_preference(preference).write_parquet(tmp)))
    elif fmt == "hf":
        from datasets import Dataset

        for what, frame in (("sft", trl_sft(sft) if sft.height else None),
                            ("preference", trl_preference(preference) if preference.height else None)):
            if frame is not None:
                written[what] = str(_save_dataset(Dataset.from_polars(frame), out / what))
    elif fmt == "llamafactory":
        info = {}
        if sft.height:
            tools = sft.select(tools_json(sft)).to_series().to_list() if _has(sft, "tools") else [None] * sft.height
            rows = [{"conversations": _sharegpt(c), **({"tools": t} if t else {})}
                    for c, t in zip(sft["messages"].to_list(), tools)]
            written["sft"] = str(_write_jsonl(rows, out / f"{name}_sft.jsonl"))
            info[f"{name}_sft"] = {"file_name": f"{name}_sft.jsonl", "formatting": "sharegpt",
                                   "columns": {"messages": "conversations", **({"tools": "tools"} if any(tools) else {})}}
        if preference.height:
            pairs = trl_preference(preference)
            rows = [{"conversations": _sharegpt(p), "chosen": _sharegpt(c)[0], "rejected": _sharegpt(r)[0]}
                    for p, c, r in zip(pairs["prompt"].to_list(), pairs["chosen"].to_list(), pairs["rejected"].to_list())]
            written["preference"] = str(_write_jsonl(rows, out / f"{name}_preference.jsonl"))
            info[f"{name}_preference"] = {"file_name": f"{name}_preference.jsonl", "formatting": "sharegpt", "ranking": True,
                                          "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
        written["dataset_info"] = str(write_json(info, out / "dataset_info.json"))
    else:  # axolotl
        config = {"datasets": [{"path": str((out / "sft.parquet").resolve()), "ds_type": "parquet", "type": "chat_template",
                                "field_messages": "messages",
                                "message_property_mappings": {"role": "role", "content": "content",
                                                              "reasoning_content": "reasoning_content",
                                                              "tool_calls": "tool_calls", "tool_call_id": "tool_call_id",
                                                              "name": "name"},
                                **({"field_tools": "tools"} if _has(sft, "tools") else {}),
                                "roles_to_train": ["assistant"]}]} if sft.height else {"datasets": []}
        written["config"] = str(write_atomic(out / "axolotl_datasets.yaml", lambda tmp: Path(tmp).write_text(_yaml(config))))
    return written


def _save_dataset(dataset, path: Path) -> Path:
    """save_to_disk into a temporary sibling, then rename it into place: no half-written directory under `path`."""
    import shutil

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dataset.save_to_disk(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False)
