"""The official Magpie registry, pinned byte for byte, and the derivation from real chat templates
(tests/data/templates: the models' published templates as vendored by llama.cpp)."""
from pathlib import Path

import pytest

from pipeline.engines.templates import OFFICIAL, ChatTemplate, family_of, load_template
from pipeline.engines.models import smollm2_gguf

TEMPLATES = Path(__file__).parent / "data" / "templates"


def real(name, bos, eos):
    return ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), bos, eos, name)


def test_official_prefixes_byte_for_byte():
    assert {k: v.pre_query_template for k, v in OFFICIAL.items()} == {
        "llama-3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        "llama-3.1": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        "llama-3.3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
        "qwen2": "<|im_start|>user\n",
        "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        "phi-3": "<s> <|user|>\n",
        "gemma-2": "<bos><start_of_turn>user\n\n",
        "mistral": "<s> [INST] ",
    }
    assert OFFICIAL["llama-3"].stop_tokens == ("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>")
    assert OFFICIAL["qwen2"].stop_tokens_assistant == ("Assistant", "assistant")
    assert OFFICIAL["llama-3"].task_templates["math"].startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are an AI assistant designed to provide "
        "helpful, step-by-step guidance on solving math problems.")
    assert OFFICIAL["llama-3"].task_templates["code"].endswith("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    assert (OFFICIAL["llama-3.1"].instruction_temperature, OFFICIAL["llama-3.1"].early_stopping) == (0.8, False)


def test_qwen25_derivation_equals_the_official_prefix():
    t = real("Qwen-Qwen2.5-7B-Instruct", "", "<|im_end|>")
    assert t.user_prefix() == OFFICIAL["qwen2.5"].pre_query_template
    assert set(t.stop_strings()) <= set(OFFICIAL["qwen2.5"].stop_tokens) and "<|im_end|>" in t.stop_strings()


@pytest.mark.parametrize("name", ["meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.3-70B-Instruct"])
def test_llama31_template_adds_a_dated_system_turn_the_official_prefix_omits(name):
    t = real(name, "<|begin_of_text|>", "<|eot_id|>")
    derived, official = t.user_prefix(), OFFICIAL["llama-3.1"].pre_query_template
    assert derived.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert derived.endswith(official.removeprefix("<|begin_of_text|>"))
    assert set(t.stop_strings()) <= set(OFFICIAL["llama-3.1"].stop_tokens)
    assert set(t.stop_strings()) | {"<|end_of_text|>"} == set(OFFICIAL["llama-3.1"].stop_tokens)
    assert OFFICIAL["llama-3.1"].mt_append_template == official.removeprefix("<|begin_of_text|>")


def test_gemma2_official_prefix_has_one_newline_more_than_the_template():
    t = real("google-gemma-2-2b-it", "<bos>", "<eos>")
    assert t.user_prefix() + "\n" == OFFICIAL["gemma-2"].pre_query_template
    assert "<end_of_turn>" in t.stop_strings() and set(t.stop_strings()) - {"<start_of_turn>"} <= set(OFFICIAL["gemma-2"].stop_tokens)


def test_phi3_official_prefix_is_the_template_after_the_tokenizers_bos():
    t = real("microsoft-Phi-3.5-mini-instruct", "<s>", "<|endoftext|>")
    assert "<s> " + t.user_prefix() == OFFICIAL["phi-3"].pre_query_template
    assert set(t.stop_strings()) <= set(OFFICIAL["phi-3"].stop_tokens) and "<|end|>" in t.stop_strings()


def test_smollm2_prefix_from_its_gguf_includes_the_default_system_turn():
    t = load_template(smollm2_gguf())
    assert t.user_prefix() == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                               "<|im_end|>\n<|im_start|>user\n")
    assert t.stop_strings() == ["<|im_end|>", "<|im_start|>"]
    history = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert t.user_prefix(history) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>user\n"


def test_family_lookup_and_bad_sources():
    assert family_of("/models/Meta-Llama-3-8B-Instruct") == "llama-3"
    assert family_of("google/gemma-2-9b-it") == "gemma-2"
    assert family_of("SmolLM2-135M-Instruct.Q4_1.gguf") is None
    with pytest.raises(ValueError, match="cannot read a chat template"):
        load_template("no-such-thing")


# (template file, bos, eos, model name as a user would pass it, what Magpie must use)
FAMILY_CASES = [
    ("NousResearch-Hermes-3-Llama-3.1-8B", "<|begin_of_text|>", "<|im_end|>", "NousResearch/Hermes-3-Llama-3.1-8B", "template"),
    ("mistralai-Mistral-Nemo-Instruct-2407", "<s>", "</s>", "mistralai/Mistral-Nemo-Instruct-2407", "template"),
    ("microsoft-Phi-3-small-8k-instruct", "<|endoftext|>", "<|endoftext|>", "microsoft/Phi-3-small-8k-instruct", "template"),
    ("meta-llama-Meta-Llama-3-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>", "meta-llama/Meta-Llama-3-8B-Instruct", "official:llama-3"),
    ("Qwen-Qwen2-7B-Instruct", "", "<|im_end|>", "Qwen/Qwen2-7B-Instruct", "official:qwen2"),
    ("meta-llama-Llama-3.1-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>", "meta-llama/Llama-3.1-8B-Instruct", "official:llama-3.1"),
    ("microsoft-Phi-3.5-mini-instruct", "<s>", "<|endoftext|>", "microsoft/Phi-3.5-mini-instruct", "official:phi-3"),
    ("google-gemma-2-2b-it", "<bos>", "<eos>", "google/gemma-2-2b-it", "template"),
]


@pytest.mark.parametrize("name, bos, eos, model, origin", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_the_pre_query_comes_from_the_models_template_unless_the_registry_agrees(name, bos, eos, model, origin):
    import warnings

    from pipeline.core.rundir import StageWarning
    from pipeline.synth import magpie

    class Engine:  # pre_query reads only these
        template, model_name = real(name, bos, eos), model.split("/")[-1]
        spec = type("Spec", (), {"model": model})()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        query = magpie.pre_query(Engine)
    assert query.origin == origin
    disagreed = [str(w.message) for w in caught if issubclass(w.category, StageWarning)]
    if origin == "template":
        assert query.prefix == Engine.template.user_prefix() and query.sanitize is False
        assert family_of(model) is None or (disagreed and "does not match the model's chat template" in disagreed[0])
    else:
        assert query.prefix == OFFICIAL[origin.split(":")[1]].pre_query_template and not disagreed


def test_hermes3_gets_chatml_not_llama3_headers_and_nemo_no_spaces():
    hermes = real("NousResearch-Hermes-3-Llama-3.1-8B", "<|begin_of_text|>", "<|im_end|>")
    assert hermes.user_prefix() == "<|begin_of_text|><|im_start|>user\n"
    nemo = real("mistralai-Mistral-Nemo-Instruct-2407", "<s>", "</s>")
    assert nemo.user_prefix() == "<s>[INST]" and OFFICIAL["mistral"].pre_query_template == "<s> [INST] "
