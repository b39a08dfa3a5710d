"""Keep secrets out of everything a run writes (manifests, stage.json, cards, logs).

Values under keys that name a secret are replaced, and so is any string that looks like a token
(Hugging Face `hf_...`, OpenAI-style `sk-...`) or equals the value of a secret environment variable.
"""
from __future__ import annotations

import os
import re

REDACTED = "***"
# Whole words only: "hf_token", "API_KEY" and "password" are secrets; "max_tokens" and "n_tokens" are not.
SECRET_KEY = re.compile(r"(?<![a-z])(?:token|secret|password|api[_-]?key|authorization)(?![a-z])", re.I)
# Tokens by their providers' documented prefixes (Hugging Face, OpenAI and Anthropic, GitHub, GitLab, AWS access key
# ids, Slack, Google API keys, Stripe, npm, PyPI, JWTs) and PEM private keys; also what the `pii` stage redacts.
TOKEN = re.compile(r"\b(?:hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}|"
                   r"glpat-[A-Za-z0-9_-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|"
                   r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}|"
                   r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})\b|"
                   r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")


def _env_secrets() -> list[str]:
    names = set(SECRET_ENV) | {k for k in os.environ if SECRET_KEY.search(k)}
    return [v for k in names if len(v := os.environ.get(k, "")) >= 8]


def redact(obj, _secrets: list[str] | None = None):
    """A copy of `obj` (JSON-like) with secrets replaced by "***"; names of env vars are kept.

    >>> redact({"api_key": "abc", "api_key_env": "MY_KEY", "max_tokens": 5, "note": "token hf_abcdefghijklmnopqrstu here"})
    {'api_key': '***', 'api_key_env': 'MY_KEY', 'max_tokens': 5, 'note': 'token *** here'}
    """
    secrets = _env_secrets() if _secrets is None else _secrets
    if isinstance(obj, dict):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) and not str(k).endswith("_env") and obj[k] else redact(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        text = TOKEN.sub(REDACTED, obj)
        for secret in secrets:
            text = text.replace(secret, REDACTED)
        return text
    return obj
