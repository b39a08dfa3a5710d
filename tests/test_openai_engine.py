"""Retry, timeout and malformed-reply handling of the OpenAI-compatible engine, on a scripted transport."""
import json

import httpx
import pytest

from pipeline.engines import EngineSpec, EngineUnavailable, Sampling
from pipeline.engines.openai import OpenAIEngine

SERVES_M = {"object": "list", "data": [{"id": "m", "object": "model"}]}
MODELS = httpx.MockTransport(lambda request: httpx.Response(200, json=SERVES_M))
OK = {"choices": [{"text": " hello", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}


def engine_with(replies, **options):
    """An engine whose server answers each request with the next item of `replies`."""
    spec = EngineSpec.make("openai", "m", base_url="http://test/v1", template="chatml",
                           options={"retries": 2, "backoff": 0.0, "concurrency": 1, **options})
    bodies, queue = [], list(replies)

    def handler(request):
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json=SERVES_M)
        bodies.append(json.loads(request.content))
        reply = queue.pop(0)
        if isinstance(reply, Exception):
            raise reply
        status, payload = reply
        return httpx.Response(status, text=payload if isinstance(payload, str) else json.dumps(payload))

    return OpenAIEngine(spec, transport=httpx.MockTransport(handler)), bodies


def test_retries_5xx_and_timeouts_then_succeeds():
    engine, bodies = engine_with([(503, "busy"), httpx.ReadTimeout("slow"), (200, OK)])
    [[c]] = engine.generate(["p"], Sampling(max_tokens=5, stop=("X",)), seeds=[7])
    assert (c.text, c.finish_reason, c.failed) == (" hello", "stop", False)
    assert len(bodies) == 3 and bodies[0]["seed"] == 7 and bodies[0]["stop"] == ["X"] and bodies[0]["prompt"] == "p"


def test_exhausted_retries_become_a_counted_failure_not_an_exception():
    engine, bodies = engine_with([httpx.ConnectError("refused")] * 3)
    [[c]] = engine.generate(["p"], Sampling())
    assert c.failed and c.text is None and c.error_kind == "connection" and len(bodies) == 3


@pytest.mark.parametrize("reply, kind", [
    ((200, "not json"), "malformed"),
    ((200, {"choices": []}), "malformed"),
    ((200, {"choices": [{"text": None}]}), "malformed"),
    ((400, "bad request: max_tokens"), "http_400"),
])
def test_malformed_replies_and_client_errors_fail_without_retry_loops(reply, kind):
    engine, bodies = engine_with([reply] * 3)
    [[c]] = engine.generate(["p"], Sampling())
    assert c.failed and c.error_kind == kind
    assert len(bodies) == (3 if kind == "malformed" and reply[1] == "not json" else 1)


def test_api_key_comes_from_the_named_environment_variable(monkeypatch):
    with pytest.raises(ValueError, match="OPENAI_KEY_FOR_TEST"):
        OpenAIEngine(EngineSpec.make("openai", "m", base_url="http://x/v1", template="chatml",
                                     options={"api_key_env": "OPENAI_KEY_FOR_TEST"}), transport=MODELS)
    monkeypatch.setenv("OPENAI_KEY_FOR_TEST", "sk-secret-123")
    spec = EngineSpec.make("openai", "m", base_url="http://x/v1", template="chatml", options={"api_key_env": "OPENAI_KEY_FOR_TEST"})
    engine = OpenAIEngine(spec, transport=MODELS)
    assert engine.client.headers["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in spec.to_json()  # specs go to manifests: only the variable's name is there


def test_start_checks_the_served_models_and_names_them():
    with pytest.raises(EngineUnavailable, match=r"serves \['m'\], not 'other': pass --model m.*--model_alias other"):
        OpenAIEngine(EngineSpec.make("openai", "other", base_url="http://x/v1", template="chatml"), transport=MODELS)

    def refused(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(EngineUnavailable, match="no OpenAI-compatible server answers at http://x/v1"):
        OpenAIEngine(EngineSpec.make("openai", "m", base_url="http://x/v1", template="chatml"),
                     transport=httpx.MockTransport(refused))
