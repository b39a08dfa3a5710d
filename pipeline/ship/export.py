"""Trainer-ready exports of a record table: TRL (conversational SFT `messages`; preference `prompt`/`chosen`/
`rejected`), LLaMA-Factory (ShareGPT JSON + `dataset_info.json`), axolotl (a `chat_template` dataset
config) and HF `datasets` directories. Every file is written atomically.

Rows with `chosen` and `rejected` are preference rows; the others are SFT rows (`messages`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl

from pipeline.core.rundir import write_atomic, write_json

FORMATS = ("trl", "llamafactory", "axolotl", "hf")
SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def split(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(SFT rows, preference rows)."""
    preference = pl.col("chosen").is_not_null() & pl.col("rejected").is_not_null() if "chosen" in df.columns else pl.lit(False)
    return df.filter(~preference & pl.col("messages").list.len().gt(0)), df.filter(preference)


def trl_sft(df: pl.DataFrame) -> pl.DataFrame:
    """TRL's conversational language-modeling format: one `messages` column."""
    return df.select("id", "messages")


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
    return pl.DataFrame({"id": df["id"], "prompt": pl.Series(prompts, dtype=conversation),
                         "chosen": pl.Series(chosen, dtype=conversation), "rejected": pl.Series(rejected, dtype=conversation)})


def _sharegpt(conversation: list[dict]) -> list[dict]:
    return [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in conversation]


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
            rows = [{"conversations": _sharegpt(c)} for c in sft["messages"].to_list()]
            written["sft"] = str(_write_jsonl(rows, out / f"{name}_sft.jsonl"))
            info[f"{name}_sft"] = {"file_name": f"{name}_sft.jsonl", "formatting": "sharegpt",
                                   "columns": {"messages": "conversations"}}
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
                                "message_property_mappings": {"role": "role", "content": "content"},
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
