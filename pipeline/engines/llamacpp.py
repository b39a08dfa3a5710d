"""llama.cpp on a GGUF file (the CPU backend), in a worker process of its own.

Options: n_ctx (2048), n_threads (all cores), n_threads_batch (n_threads), n_batch (512), timeout (600 s per
request: a worker that does not answer by then is killed, the request fails as engine_error:timeout and the worker restarts). The high-level
llama-cpp-python API decodes one sequence at a time, so requests run sequentially, each from a fresh context.

Why a worker process: llama.cpp is native code, and a build whose kernels do not fit the CPU (AMX on some
Intel Xeons) dies with SIGSEGV on the first multi-token prompt. In-process, that kills the run, or the
whole test session, without a word. In a worker, a crash fails only the requests in flight: each becomes a
Completion with error "crashed: ..." (rows `engine_error:crashed`, counted against max_failure_rate), the
worker is restarted for the next request, and after `MAX_CRASHES_IN_A_ROW` crashes the rest of the batch
fails at once so a broken build stops the run with the resume hint instead of looping.

The worker speaks JSON lines on stdin/stdout (`python -m pipeline.engines.llamacpp`); llama.cpp's own
prints go to stderr, never into the protocol.

Prompts are tokenized as the text they are (special tokens parsed), plus the model's BOS when the GGUF says to add
one and the text does not start with it, as the vLLM engine does: a rendered Llama-3 template never gets a second
BOS. A prompt that does not fit n_ctx fails as `too_long`; max_tokens is capped at what is left (llama.cpp's rule).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Sequence

from pipeline.engines.templates import load_template
from pipeline.engines import (BANNED_LOGIT, Completion, EngineSpec, EngineUnavailable, Sampling, expand_requests, failed,
                              regroup, render, templated)
from pipeline.engines.usage import Usage
from pipeline.engines.models import resolve_model

MAX_CRASHES_IN_A_ROW = 3
REBUILD_HINT = ("rebuild llama.cpp: rm -rf ~/.cache/aligndata/wheels/llama-cpp-* .venv/.llama-cpp-build && ./install.sh "
                "(LLAMA_CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON' tries other flags)")


def _signal_name(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class LlamaCppEngine:
    supports_logits_processors = True  # Sampling's first-token rule (_first_token_processor)

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.path = resolve_model("llamacpp", spec.model)
        self.context_length = int(spec.opts.get("n_ctx", 2048))
        self.options = {"model_path": self.path, "n_ctx": self.context_length,
                        "n_batch": int(spec.opts.get("n_batch", 512)),
                        "n_threads": int(spec.opts.get("n_threads", os.cpu_count() or 1))}
        # Prompt processing uses as many threads as decoding (llama.cpp's default is every core, which a replica
        # given one core of a shared machine must not take).
        self.options["n_threads_batch"] = int(spec.opts.get("n_threads_batch", self.options["n_threads"]))
        self.timeout = float(spec.opts.get("timeout", 600))
        self.template = load_template(spec.template or self.path)
        self.model_name = os.path.basename(self.path)
        self.crashes = 0  # worker crashes since this engine was built (each failed the requests in flight)
        self.usage = Usage()
        self._worker: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one request at a time on the worker's pipes
        self.system_info = self._start()["system_info"]

    @property
    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker and self._worker.poll() is None else None

    def _start(self) -> dict:
        self._worker = subprocess.Popen([sys.executable, "-m", "pipeline.engines.llamacpp"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, encoding="utf-8")
        self._worker.stdin.write(json.dumps(self.options) + "\n")
        self._worker.stdin.flush()
        ready = self._read()
        if ready is None or "fatal" in ready:
            why = ready["fatal"] if ready else f"the worker died with {_signal_name(self._worker.wait())}"
            raise EngineUnavailable(f"llama.cpp could not load {self.path}: {why}. If it crashed, {REBUILD_HINT}")
        return ready

    def _read(self) -> dict | None:
        line = self._worker.stdout.readline()
        return json.loads(line) if line else None

    def _call(self, request: dict) -> dict:
        """Send one request and return the worker's reply; a failure is {"failed": "<kind>: ..."} (kinds crashed,
        timeout, too_long, engine). A worker that crashed or hung is replaced on the next call."""
        with self._lock:
            if self._worker is None or self._worker.poll() is not None:
                if self._worker is not None:  # it died between requests: no request was lost
                    print(f"aligndata: the llama.cpp worker had exited ({_signal_name(self._worker.returncode)}); "
                          "restarting it", file=sys.stderr)
                self._start()
            try:
                self._worker.stdin.write(json.dumps(request) + "\n")
                self._worker.stdin.flush()
                # one reply line per request, so nothing is buffered between calls and select sees the pipe
                answered, _, _ = select.select([self._worker.stdout], [], [], self.timeout)
                if not answered:
                    self._worker.kill()
                    self._worker.wait()
                    self._worker = None  # the next request starts a fresh one
                    return {"failed": f"timeout: llama.cpp worker gave no answer in {self.timeout:g} s; it was restarted"}
                reply = self._read()
            except (BrokenPipeError, OSError):
                reply = None
            if reply is None:
                self.crashes += 1
                how = _signal_name(self._worker.wait())
                self._worker = None  # the next request starts a fresh one
                print(f"aligndata: the llama.cpp worker died with {how} on a request; it is failed as "
                      f"engine_error:crashed and the worker restarts. If this repeats, {REBUILD_HINT}.", file=sys.stderr)
                return {"failed": f"crashed: llama.cpp worker died with {how}"}
            return reply

    def _run_all(self, requests: list[dict]) -> list[dict]:
        replies, in_a_row = [], 0
        for request in requests:
            if in_a_row >= MAX_CRASHES_IN_A_ROW:
                replies.append({"failed": f"crashed: skipped after {in_a_row} worker crashes in a row; {REBUILD_HINT}"})
                continue
            replies.append(self._call(request))
            in_a_row = in_a_row + 1 if replies[-1].get("failed", "").startswith(("crashed", "timeout")) else 0
        return replies

    def generate(self, requests: Sequence, sampling: Sampling, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        prompts, sampling = templated(self.template, requests, sampling)
        requests = [{"op": "complete", "prompt": prompt, "seed": seed, "max_tokens": sampling.max_tokens,
                     "temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(sampling.stop),
                     "logprobs": sampling.logprobs, "json_schema": sampling.json_schema_text,
                     "first_token": sampling.first_token_rule}
                    for _, prompt, seed in expand_requests(prompts, sampling, seeds)]
        flat = []
        for reply in self._run_all(requests):
            if "failed" in reply:
                flat.append(failed(reply["failed"]))
            else:
                flat.append(Completion(text=reply["text"], finish_reason=reply["finish_reason"],
                                       n_tokens=reply["n_tokens"], logprobs=reply["logprobs"],
                                       prompt_tokens=reply.get("prompt_tokens", 0)))
        self.usage.add(flat)
        return regroup(prompts, sampling, flat)

    def prompt_logprobs(self, prompts: Sequence[str]) -> list[list[float] | None]:
        replies = self._run_all([{"op": "prompt_logprobs", "prompt": prompt} for prompt in prompts])
        return [reply.get("logprobs") for reply in replies]

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Tokens each text takes as a prompt (None if the worker could not say)."""
        reply = self._call({"op": "count_tokens", "texts": [render(self.template, t) for t in texts]})
        return reply.get("counts")

    def close(self) -> None:
        """Stop the worker (it also exits by itself when this process goes: its stdin closes)."""
        worker, self._worker = self._worker, None
        if worker and worker.poll() is None:
            worker.stdin.close()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()


# ---- the worker side: runs in `python -m pipeline.engines.llamacpp` -------------------------------------

def _complete(llm, grammars: dict, request: dict) -> dict:
    import numpy as np
    from llama_cpp import LlamaGrammar

    # Reusing the KV cache of the previous request shifts the logits slightly, so the same seed would
    # give different text depending on what ran before; a fresh context keeps every request reproducible.
    llm.reset()
    schema = request["json_schema"]
    if schema and schema not in grammars:
        grammars[schema] = LlamaGrammar.from_json_schema(schema, verbose=False)
    seed = request["seed"] if request["seed"] is not None else int(np.random.randint(2**31))
    rule = request.get("first_token")
    out = llm.create_completion(
        _prompt_tokens(llm, request["prompt"]), max_tokens=request["max_tokens"], temperature=request["temperature"], top_p=request["top_p"],
        top_k=0, min_p=0.0, repeat_penalty=1.0, stop=request["stop"] or None, seed=seed, logprobs=request["logprobs"],
        grammar=grammars.get(schema), logits_processor=_first_token_processor(rule) if rule else None)
    choice = out["choices"][0]
    logprobs = None
    if request["logprobs"] and choice.get("logprobs"):
        logprobs = [{tok: float(lp) for tok, lp in (top or {}).items()} for top in choice["logprobs"]["top_logprobs"]]
    return {"text": choice["text"], "finish_reason": choice.get("finish_reason") or "stop",
            "n_tokens": out["usage"]["completion_tokens"], "prompt_tokens": out["usage"]["prompt_tokens"], "logprobs": logprobs}


def _first_token_processor(rule: dict):
    """llama.cpp's logits processor for a first-token rule: called once per generated token, it acts on the first."""
    from llama_cpp import LogitsProcessorList

    calls = [0]

    def first_token(input_ids, scores):
        calls[0] += 1
        if calls[0] == 1:
            scores = scores / rule["temperature"]
            scores[rule["ban"]] = BANNED_LOGIT
        return scores

    return LogitsProcessorList([first_token])


def _prompt_tokens(llm, prompt: str) -> list[int]:
    """The prompt's tokens: its text as written, special tokens parsed, plus the model's BOS when the model adds one
    and the text does not already start with it."""
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    bos = llm.token_bos()
    if llm._model.add_bos_token() and bos >= 0 and tokens[:1] != [bos]:
        tokens = [bos, *tokens]
    return tokens


def _prompt_logprobs(llm, request: dict) -> dict:
    import numpy as np

    tokens = _prompt_tokens(llm, request["prompt"])
    if len(tokens) > llm.n_ctx():
        return {"logprobs": None}
    llm.reset()
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
    logz = np.logaddexp.reduce(logits, axis=1)
    picked = logits[np.arange(len(tokens) - 1), tokens[1:]]
    return {"logprobs": (picked - logz).tolist()}


def serve_worker(options: dict) -> None:
    """Load the model, then answer JSON-line requests from stdin until it closes."""
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # anything native code prints goes to stderr, never into the protocol

    def send(obj: dict) -> None:
        protocol.write(json.dumps(obj) + "\n")

    try:
        import llama_cpp

        llm = llama_cpp.Llama(**options, logits_all=True, verbose=False)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        send({"fatal": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    send({"ready": True, "system_info": llama_cpp.llama_print_system_info().decode(errors="replace")})
    grammars: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "count_tokens":
                reply = {"counts": [len(_prompt_tokens(llm, text)) for text in request["texts"]]}
            elif request["op"] == "complete":
                reply = _complete(llm, grammars, request)
            else:
                reply = _prompt_logprobs(llm, request)
        except (ValueError, RuntimeError) as exc:  # "Requested tokens (N) exceed context window of M": too long
            reply = {"failed": f"{'too_long' if 'exceed context window' in str(exc) else 'engine'}: {exc}"}
        send(reply)


if __name__ == "__main__":
    serve_worker(json.loads(sys.stdin.readline()))
