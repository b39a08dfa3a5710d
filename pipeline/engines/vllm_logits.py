"""Magpie's first-token logits processors on vLLM V1, whose custom processors are classes given to the engine at
construction (`LLM(logits_processors=[...])`) and configured per request through `SamplingParams.extra_args`.

A request with `extra_args["first_token"] = {"ban": [token ids], "temperature": t}` (Sampling.first_token_rule) has its
first generated token's logits divided by t and the banned ids set to BANNED_LOGIT; later tokens are untouched.
"""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from pipeline.engines import BANNED_LOGIT


class FirstTokenProcessor(AdapterLogitsProcessor):
    """vLLM V1 logits processor for Sampling's first-token rule."""

    def is_argmax_invariant(self) -> bool:
        return False  # a ban changes the greedy token

    def new_req_logits_processor(self, params):
        rule = (params.extra_args or {}).get("first_token")
        if not rule:
            return None

        def first_token(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if output_ids:  # only the first generated token
                return logits
            logits = logits / rule["temperature"]
            if rule["ban"]:
                logits[torch.tensor(rule["ban"], device=logits.device)] = BANNED_LOGIT
            return logits

        return first_token
