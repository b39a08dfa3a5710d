"""Trainer exports carry reasoning and tool calls, and a real chat template renders them: TRL's file goes through
transformers' apply_chat_template (SmolLM2's tokenizer with the Qwen3 chat template, which renders tools, tool calls,
tool results and reasoning_content; tests/data/templates/Qwen-Qwen3-8B.jinja is the original Qwen3 template as TRL
1.16 ships it in trl/chat_templates/qwen3.jinja), and LLaMA-Factory's file is its thinking and function_call format."""
import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.core.records import conform
from pipeline.ship.export import export

TEMPLATE = Path(__file__).parent / "data" / "templates" / "Qwen-Qwen3-8B.jinja"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def records() -> pl.DataFrame:
    rows = [{"id": "tool", "source": "tools", "meta": "{}", "tools": [json.dumps(WEATHER)], "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"},
                {"role": "assistant", "content": "It is 21 degrees in Paris.", "reasoning": "The tool said 21."}]},
            {"id": "math", "source": "distill", "meta": "{}", "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "\\boxed{4}", "reasoning": "Two and two make four."}]}]
    return pl.from_arrow(conform(pl.DataFrame(rows, infer_schema_length=None)))


def test_trl_export_renders_tools_calls_results_and_reasoning_with_a_real_template(tmp_path):
    from transformers import AutoTokenizer

    from pipeline.engines.models import smollm2_hf_dir

    written = export(records(), tmp_path, "trl")
    sft = pl.read_parquet(written["sft"])
    assert sft.columns == ["id", "messages", "tools"] and sft["tools"][1] is None
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    template = TEMPLATE.read_text()
    rows = sft.to_dicts()
    tool_text = tokenizer.apply_chat_template(rows[0]["messages"], tools=json.loads(rows[0]["tools"]),
                                              chat_template=template, tokenize=False)
    assert f"<tools>\n{json.dumps(WEATHER)}\n</tools>" in tool_text  # the schema in the system turn
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in tool_text
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in tool_text
    assert "<think>\nThe tool said 21.\n</think>\n\nIt is 21 degrees in Paris." in tool_text
    math_text = tokenizer.apply_chat_template(rows[1]["messages"], chat_template=template, tokenize=False)
    assert math_text.endswith("<|im_start|>assistant\n<think>\nTwo and two make four.\n</think>\n\n\\boxed{4}<|im_end|>\n")


def test_llamafactory_export_uses_its_thinking_and_function_call_format(tmp_path):
    written = export(records(), tmp_path, "llamafactory", name="d")
    rows = [json.loads(line) for line in Path(written["sft"]).read_text().splitlines()]
    assert [t["from"] for t in rows[0]["conversations"]] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(rows[0]["conversations"][1]["value"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert rows[0]["conversations"][3]["value"] == "<think>\nThe tool said 21.\n</think>\n\nIt is 21 degrees in Paris."
    assert json.loads(rows[0]["tools"]) == [WEATHER] and "tools" not in rows[1]
    info = json.loads(Path(written["dataset_info"]).read_text())
    assert info["d_sft"]["columns"] == {"messages": "conversations", "tools": "tools"}


@pytest.mark.slow
def test_trl_trains_one_step_on_the_tool_and_reasoning_export(tmp_path, tiny_model):
    """TRL's SFTTrainer takes our TRL file as it is (tools as JSON text, tool calls, tool results, reasoning) with the
    Qwen3 template, and what it trains on holds the rendered calls, results and thinking."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    written = export(records(), tmp_path, "trl")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), processing_class=tokenizer,
                         train_dataset=load_dataset("parquet", data_files=str(written["sft"]), split="train"),
                         args=SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2,
                                        report_to=[], save_strategy="no", use_cpu=True, chat_template_path=str(TEMPLATE)))
    trained = [tokenizer.decode(row["input_ids"]) for row in trainer.train_dataset]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in trained[0]
    assert '<tool_response>\n{"temp": 21}\n</tool_response>' in trained[0] and "<tools>" in trained[0]
    assert "<think>\nTwo and two make four.\n</think>" in trained[1]
    assert trainer.train().global_step == 1
