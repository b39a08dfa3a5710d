"""Trainer-ready exports, proven by real consumers: `datasets` loads them and TRL's SFTTrainer and DPOTrainer
take an optimisation step on a tiny random Llama built here (SmolLM2's tokenizer and chat template, offline)."""
import json

import polars as pl
import pytest
import yaml

from pipeline.ship import export

USER = {"role": "user", "content": "What is the capital of France?"}


def records():
    conversation = [USER, {"role": "assistant", "content": "Paris."}]
    return pl.DataFrame({
        "id": ["s1", "s2", "p1", "p2"], "source": "t", "meta": "{}",
        "messages": [conversation, [USER, {"role": "assistant", "content": "It is Paris, on the Seine."}], [USER], [USER]],
        "chosen": [None, None, conversation, [USER, {"role": "assistant", "content": "Paris is the capital."}]],
        "rejected": [None, None, [USER, {"role": "assistant", "content": "Lyon."}], [USER, {"role": "assistant", "content": "Rome."}]],
    })


def test_trl_and_llamafactory_and_axolotl_files(tmp_path):
    trl = export.export(records(), tmp_path / "trl", "trl")
    sft, pref = pl.read_parquet(trl["sft"]), pl.read_parquet(trl["preference"])
    assert sft["id"].to_list() == ["s1", "s2"] and pref.columns == ["id", "prompt", "chosen", "rejected"]
    assert pref["prompt"][0].to_list() == [USER] and pref["chosen"][0].to_list() == [{"role": "assistant", "content": "Paris."}]
    lf = export.export(records(), tmp_path / "lf", "llamafactory")
    info = json.loads(open(lf["dataset_info"]).read())
    assert info["aligndata_preference"]["ranking"] is True and info["aligndata_sft"]["formatting"] == "sharegpt"
    first = json.loads(open(lf["preference"]).readline())
    assert first["conversations"] == [{"from": "human", "value": USER["content"]}] and first["chosen"]["from"] == "gpt"
    ax = yaml.safe_load(open(export.export(records(), tmp_path / "ax", "axolotl")["config"]))
    assert ax["datasets"][0]["type"] == "chat_template" and ax["datasets"][0]["field_messages"] == "messages"
    with pytest.raises(ValueError, match="valid: \\['trl', 'llamafactory', 'axolotl', 'hf'\\]"):
        export.export(records(), tmp_path, "csv")


@pytest.mark.slow
def test_trl_trains_one_step_on_our_exports(tmp_path, tiny_model):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    written = export.export(records(), tmp_path / "hf", "hf")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no", use_cpu=True,
                  logging_steps=1)
    sft = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), processing_class=tokenizer,
                     train_dataset=load_from_disk(written["sft"]), args=SFTConfig(output_dir=str(tmp_path / "sft"), **common))
    assert sft.train().global_step == 1
    dpo = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), processing_class=tokenizer,
                     train_dataset=load_from_disk(written["preference"]), args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common))
    result = dpo.train()
    assert result.global_step == 1 and result.training_loss > 0
