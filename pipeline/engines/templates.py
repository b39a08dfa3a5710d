"""Chat templates: render conversations, and derive Magpie's pre-query prefix and stop strings.

Everything model-specific comes from the model's own chat template (a Jinja string read from the GGUF or
the HF tokenizer). `OFFICIAL` pins the official Magpie settings (magpie-align/magpie
`configs/model_configs.json`) for the families the paper lists; Magpie uses them for those families.
The registry is used only when it agrees with the model's own template (`registry_agrees`): a fine-tune
whose name matches a family but whose template does not (Hermes-3 on Llama-3.1 speaks ChatML; Mistral-Nemo
writes `[INST]` without the spaces of Mistral-7B's entry) gets the prefix of its template. Agreement allows
what the official code deliberately leaves out: a default system turn (Llama-3.1/3.3 add a dated one) and the
space Phi-3's tokenizer puts after `<s>`; Gemma-2's official prefix has two newlines after `user` where its
template has one, so Gemma-2 uses its template's (tests/test_chat.py spells each case out).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MARKER = "\x00ALIGNDATA-MARKER\x00"
# Special tokens as they appear in rendered templates: <|eot_id|>, <end_of_turn>, </s>, [INST], [/INST].
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]+\|>|</?[A-Za-z_][A-Za-z0-9_]*>|\[/?[A-Z_]+\]|<｜[^｜]+｜>")


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template with the special tokens it refers to."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    name: str = ""

    @cached_property
    def _compiled(self):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

        def raise_exception(message):
            raise TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = lambda obj, indent=None, ensure_ascii=False: json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii)
        return env.from_string(self.source)

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages`, as `tokenizer.apply_chat_template(..., tokenize=False)` renders it."""
        return self._compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token, eos_token=self.eos_token,
        )

    def prompt(self, user: str, *, opening: str = "", system: str | None = None) -> str:
        """One user turn (after an optional system turn) rendered with the generation prompt, then `opening`:
        the start of the assistant's reply, so the next token is the answer itself (a digit, a JSON object).

        >>> load_template("chatml").prompt("Rate it.", opening="Rating: ")
        '<|im_start|>user\\nRate it.<|im_end|>\\n<|im_start|>assistant\\nRating: '
        """
        system_turn = [{"role": "system", "content": system}] if system is not None else []
        return self.render([*system_turn, {"role": "user", "content": user}], add_generation_prompt=True) + opening

    def user_prefix(self, history: list[dict] = ()) -> str:
        """Magpie's pre-query text: the rendering of `history` plus a user turn, cut where the user's text starts.

        With an empty history this is the pre-query template (including any default system turn the
        template adds); with a history it is the multi-turn append point.
        """
        text = self.render([*history, {"role": "user", "content": MARKER}], add_generation_prompt=False)
        if MARKER not in text:
            raise ValueError(f"chat template {self.name or '<inline>'} does not render the user's text; cannot derive a Magpie prefix")
        return text.split(MARKER)[0]

    def end_of_user_turn(self) -> str:
        """The text the template puts between the end of a user's text and the assistant's reply."""
        text = self.render([{"role": "user", "content": MARKER}], add_generation_prompt=True)
        return text.split(MARKER)[1]

    def stop_strings(self) -> list[str]:
        """Stop strings for sampling a user turn: the special tokens that close it, plus EOS.

        For Llama-3 this gives exactly the official list (<|eot_id|>, <|start_header_id|>, <|end_header_id|>,
        <|end_of_text|>); for other families it is a subset of the official list that includes the
        end-of-turn token.
        """
        tokens = SPECIAL_TOKEN.findall(self.end_of_user_turn())
        if not tokens:  # templates that close a turn with plain text ("\nASSISTANT:") stop on that text
            tokens = [self.end_of_user_turn().strip()] if self.end_of_user_turn().strip() else []
        if self.eos_token:
            tokens.append(self.eos_token)
        return list(dict.fromkeys(t for t in tokens if t))


def load_template(source: str | Path) -> ChatTemplate:
    """Read a chat template from a .gguf file, an HF model/tokenizer directory, a .jinja file or "chatml".

    >>> load_template("chatml").user_prefix()
    '<|im_start|>user\\n'
    """
    if str(source) == "chatml":
        return ChatTemplate(source=CHATML, eos_token="<|im_end|>", name="chatml")
    path = Path(source)
    if path.suffix == ".gguf":
        return _from_gguf(path)
    if path.is_dir():
        return _from_hf_dir(path)
    if path.suffix in (".jinja", ".j2") and path.exists():
        return ChatTemplate(source=path.read_text(), name=path.name)
    raise ValueError(
        f"cannot read a chat template from {source!r}: give a .gguf file, an HF model directory, "
        "a .jinja file, or 'chatml'"
    )


def _from_gguf(path: Path) -> ChatTemplate:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    template = value("tokenizer.chat_template")
    if not template:
        raise ValueError(f"{path}: the GGUF has no tokenizer.chat_template; pass a template explicitly")
    tokens = reader.fields["tokenizer.ggml.tokens"]

    def token(key):
        idx = value(key)
        return "" if idx is None else bytes(tokens.parts[tokens.data[int(idx)]]).decode()

    return ChatTemplate(source=template, bos_token=token("tokenizer.ggml.bos_token_id"),
                        eos_token=token("tokenizer.ggml.eos_token_id"), name=path.name)


def _from_hf_dir(path: Path) -> ChatTemplate:
    config = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").exists() else {}
    template = (path / "chat_template.jinja").read_text() if (path / "chat_template.jinja").exists() else config.get("chat_template")
    if not template:
        raise ValueError(f"{path}: no chat_template.jinja and no chat_template in tokenizer_config.json")

    def token(key):
        tok = config.get(key) or ""
        return tok.get("content", "") if isinstance(tok, dict) else tok

    return ChatTemplate(source=template, bos_token=token("bos_token"), eos_token=token("eos_token"), name=path.name)


@dataclass(frozen=True)
class OfficialTemplate:
    """One family's entry in the official Magpie configuration, with its sampling defaults."""

    pre_query_template: str
    stop_tokens: tuple[str, ...]
    stop_tokens_assistant: tuple[str, ...]
    mt_append_template: str | None = None
    task_templates: dict = field(default_factory=dict)  # "math" | "code" | "translation" -> pre-query text
    instruction_temperature: float = 1.0
    instruction_top_p: float = 1.0
    response_temperature: float = 0.0
    response_top_p: float = 1.0
    instruction_max_tokens: int = 2048  # exp/gen_ins.py's default; the Llama-3.1/3.3 scripts pass 1024
    early_stopping: bool = True  # add "\n" as a stop string: instructions are single-line
    sanitize: bool = False  # the official instruction_post_process applies to Llama-3 and Gemma-2 only


_LLAMA3_SYSTEM = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
TASK_SYSTEM_PROMPTS = {
    "math": "You are an AI assistant designed to provide helpful, step-by-step guidance on solving math problems. "
            "The user will ask you a wide range of complex mathematical questions.\nYour purpose is to assist users in "
            "understanding mathematical concepts, working through equations, and arriving at the correct solutions.",
    "code": "You are an AI assistant designed to provide helpful, step-by-step guidance on coding problems. The user "
            "will ask you a wide range of coding questions.\nYour purpose is to assist users in understanding coding "
            "concepts, working through code, and arriving at the correct solutions.",
    "translation": "You are an AI assistant specifically designed to provide accurate and contextually appropriate "
                   "translations. Users will ask you to translate text between various languages.\nYour purpose is to "
                   "assist users in understanding and conveying meaning across languages, maintaining the original "
                   "context and nuances.",
}
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_LLAMA3 = dict(
    pre_query_template="<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
    stop_tokens=("<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
    stop_tokens_assistant=("assistant",),
    mt_append_template="<|start_header_id|>user<|end_header_id|>\n\n",
    task_templates={task: _LLAMA3_SYSTEM.format(prompt) for task, prompt in TASK_SYSTEM_PROMPTS.items()},
    sanitize=True,
)
_QWEN = dict(stop_tokens=("<|im_start|>", "<|im_end|>", "<|endoftext|>"), stop_tokens_assistant=("Assistant", "assistant"))
OFFICIAL: dict[str, OfficialTemplate] = {
    "llama-3": OfficialTemplate(**_LLAMA3),
    "llama-3.1": OfficialTemplate(**{**_LLAMA3, "instruction_temperature": 0.8, "response_temperature": 0.6,
                                     "response_top_p": 0.9, "early_stopping": False, "instruction_max_tokens": 1024}),
    "llama-3.3": OfficialTemplate(**{**_LLAMA3, "early_stopping": False, "instruction_max_tokens": 1024}),
    "qwen2": OfficialTemplate(pre_query_template="<|im_start|>user\n", **_QWEN),
    "qwen2.5": OfficialTemplate(
        pre_query_template="<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        instruction_temperature=0.7, **_QWEN),
    "phi-3": OfficialTemplate(
        pre_query_template="<s> <|user|>\n",
        stop_tokens=("</s>", "<s>", "<unk>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"),
        stop_tokens_assistant=("assistant",)),
    "gemma-2": OfficialTemplate(
        pre_query_template="<bos><start_of_turn>user\n\n", stop_tokens=("<eos>", "<bos>", "<end_of_turn>"),
        stop_tokens_assistant=("assistant",), early_stopping=False, sanitize=True),
    "mistral": OfficialTemplate(
        pre_query_template="<s> [INST] ", stop_tokens=("<s>", "</s>", "[INST]", "[/INST]"),
        stop_tokens_assistant=("assistant",)),
}


def registry_agrees(official: str, template: ChatTemplate) -> bool:
    """Whether an official pre-query prefix says what the model's template says: after the template's own BOS
    (and the space a tokenizer may put after it), the official prefix is how the template's prefix ends.

    >>> chatml = load_template("chatml")
    >>> registry_agrees("<|im_start|>user\\n", chatml), registry_agrees("<s> [INST] ", chatml)
    (True, False)
    """
    body = official
    if template.bos_token and body.startswith(template.bos_token):
        body = body[len(template.bos_token):].lstrip(" ")
    return bool(body) and template.user_prefix().endswith(body)


def family_of(model: str) -> str | None:
    """The OFFICIAL key for a model name or path, by the same substring rules the official code uses.

    >>> family_of("meta-llama/Llama-3.1-8B-Instruct"), family_of("Qwen/Qwen2.5-7B-Instruct"), family_of("SmolLM2")
    ('llama-3.1', 'qwen2.5', None)
    """
    name = model.lower().replace("meta-llama-3", "llama-3")
    for key in sorted(OFFICIAL, key=len, reverse=True):
        if key in name or key.replace("-", "") in name.replace("-", ""):
            return key
    return None
