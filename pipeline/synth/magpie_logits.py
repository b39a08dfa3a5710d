"""Magpie's first-token logits processors (official exp/str_utils.py), as Sampling's first-token fields, which the
vLLM (V1 logits-processor interface) and llama.cpp engines apply:

- de-markdown (`de_md_logits_processor_for_llama3_1`): the first instruction token may not be a markdown header
  (Llama-3 vocabulary ids 2 '#', 567 '##', 14711 '###', 827 '####', set to -9999.999);
- flaming tokens: the first token's logits are divided by 1.2 (a hotter first token).

On by default where the official scripts turn them on: de-markdown for Llama-3.1, flaming tokens for Qwen2.5-Math.
"""
from __future__ import annotations

from pipeline.engines.templates import family_of

LLAMA3_MARKDOWN_HEADERS = (2, 567, 14711, 827)
FLAMING_TOKENS_TEMPERATURE = 1.2
PROCESSORS = {"none": {}, "de-markdown": {"first_token_ban": LLAMA3_MARKDOWN_HEADERS},
              "flaming-tokens": {"first_token_temperature": FLAMING_TOKENS_TEMPERATURE}}
FIRST_TOKEN_PROCESSORS = {"llama-3.1": "de-markdown", "qwen2.5-math": "flaming-tokens"}


def default_processor(model: str) -> str:
    """The processor the official scripts use for `model` ("none" for most).

    >>> default_processor("meta-llama/Llama-3.1-70B-Instruct"), default_processor("Qwen/Qwen2.5-Math-72B-Instruct")
    ('de-markdown', 'flaming-tokens')
    >>> default_processor("Qwen/Qwen2.5-7B-Instruct"), default_processor("smollm2")
    ('none', 'none')
    """
    if "qwen2.5-math" in model.lower():
        return FIRST_TOKEN_PROCESSORS["qwen2.5-math"]
    return FIRST_TOKEN_PROCESSORS.get(family_of(model) or "", "none")


def sampling_fields(name: str) -> dict:
    """Sampling's first-token fields for a processor name."""
    if name not in PROCESSORS:
        raise ValueError(f"unknown Magpie logits processor {name!r}; valid: {list(PROCESSORS)}")
    return dict(PROCESSORS[name])
