"""In-process llama.cpp on a GGUF file (the CPU backend).

Options: n_ctx (2048), n_threads (all cores), n_batch (512). The high-level llama-cpp-python API
decodes one sequence at a time, so requests run sequentially, each from a fresh context.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from pipeline.chat import load_template
from pipeline.engines import Completion, EngineSpec, Sampling, expand_requests, failed, regroup
from pipeline.models import resolve_model


class LlamaCppEngine:
    def __init__(self, spec: EngineSpec):
        from llama_cpp import Llama

        self.spec = spec
        path = resolve_model("llamacpp", spec.model)
        opts = spec.opts
        self.llm = Llama(model_path=path, n_ctx=int(opts.get("n_ctx", 2048)), n_batch=int(opts.get("n_batch", 512)),
                         n_threads=int(opts.get("n_threads", os.cpu_count() or 1)), logits_all=True, verbose=False)
        self.template = load_template(spec.template or path)
        self.model_name = os.path.basename(path)
        self._grammars: dict = {}

    def generate(self, prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        flat = [self._one(prompt, sampling, seed) for _, prompt, seed in expand_requests(prompts, sampling, seeds)]
        return regroup(prompts, sampling, flat)

    def _one(self, prompt: str, sampling: Sampling, seed: int | None) -> Completion:
        # Reusing the KV cache of the previous request shifts the logits slightly, so the same seed would
        # give different text depending on what ran before; a fresh context keeps every request reproducible.
        self.llm.reset()
        grammar = self._grammar(sampling.json_schema_text) if sampling.json_schema else None
        try:
            out = self.llm.create_completion(
                prompt, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                top_k=0, min_p=0.0, repeat_penalty=1.0, stop=list(sampling.stop) or None,
                seed=seed if seed is not None else np.random.randint(2**31), logprobs=sampling.logprobs, grammar=grammar,
            )
        except (ValueError, RuntimeError) as exc:  # e.g. prompt longer than the context window
            return failed(f"engine: {exc}")
        choice = out["choices"][0]
        logprobs = None
        if sampling.logprobs and choice.get("logprobs"):
            logprobs = [{tok: float(lp) for tok, lp in (top or {}).items()} for top in choice["logprobs"]["top_logprobs"]]
        return Completion(text=choice["text"], finish_reason=choice.get("finish_reason") or "stop",
                          n_tokens=out["usage"]["completion_tokens"], logprobs=logprobs)

    def _grammar(self, schema: str):
        from llama_cpp import LlamaGrammar

        if schema not in self._grammars:
            self._grammars[schema] = LlamaGrammar.from_json_schema(schema, verbose=False)
        return self._grammars[schema]

    def prompt_logprobs(self, prompts: Sequence[str]) -> list[list[float] | None]:
        results = []
        for prompt in prompts:
            tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
            if len(tokens) > self.llm.n_ctx():
                results.append(None)
                continue
            self.llm.reset()
            self.llm.eval(tokens)
            logits = np.asarray(self.llm.scores[: len(tokens) - 1], dtype=np.float64)
            logz = np.logaddexp.reduce(logits, axis=1)
            picked = logits[np.arange(len(tokens) - 1), tokens[1:]]
            results.append((picked - logz).tolist())
        return results
