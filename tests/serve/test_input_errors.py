"""Bad input gets a 4xx with an OpenAI-style error body, never a 500 or a hang."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import Served


def _error(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, f"{r.status_code}: {r.text}"
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/generate"])
def test_malformed_json(served: Served, route: str) -> None:
    with served.client(timeout=30) as c:
        r = c.post(route, content=b'{"prompt": "hi",', headers={"Content-Type": "application/json"})
    _error(r, 400)


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/generate", {"prompt": 42}, "prompt"),
        ("/generate", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ("/generate", {}, "prompt"),
        ("/generate", {"prompt": "hi", "bogus": 1}, "bogus"),
        ("/batch_generate", {"prompts": "not a list"}, "prompts"),
        ("/v1/chat/completions", {"model": 7, "messages": []}, "model"),
        ("/v1/chat/completions", {"temperature": 0}, "messages"),
        ("/v1/completions", {"max_tokens": 3}, "prompt"),
    ],
)
def test_wrong_types_and_missing_fields(
    served: Served, route: str, body: dict[str, object], param: str
) -> None:
    with served.client(timeout=30) as c:
        err = _error(c.post(route, json=body), 400)
    assert param in str(err["param"]) or param in str(err["message"])


def test_body_must_be_an_object(served: Served) -> None:
    with served.client(timeout=30) as c:
        _error(c.post("/v1/chat/completions", json=["not", "an", "object"]), 400)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/generate"])
def test_unknown_model_is_404(served: Served, route: str) -> None:
    body = {
        "model": "no-such-model",
        "prompt": "hi",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if route == "/generate":
        body.pop("messages")
    with served.client(timeout=30) as c:
        err = _error(c.post(route, json=body), 404)
    assert "no-such-model" in str(err["message"])


def test_empty_and_over_limit_batches(served: Served) -> None:
    with served.client(timeout=30) as c:
        _error(c.post("/batch_generate", json={"prompts": []}), 400)
        # The fixture runs with --max-batch-size 8.
        err = _error(c.post("/batch_generate", json={"prompts": ["x"] * 9, "max_tokens": 1}), 400)
    assert "9 prompts is over this gateway's limit of 8" in str(err["message"]), err


def test_prompt_longer_than_the_context(served: Served) -> None:
    long_prompt = "hello " * 6000  # more tokens than the 4096-token context
    with served.client(timeout=60) as c:
        for route, body in (
            ("/v1/completions", {"model": served.model, "prompt": long_prompt, "max_tokens": 4}),
            ("/generate", {"prompt": long_prompt, "max_tokens": 4}),
        ):
            err = _error(c.post(route, json=body), 400)
            message = str(err["message"])
            # Both numbers: the context and the prompt's length (vLLM stops counting at 4097).
            assert "maximum context length is 4096 tokens" in message, message
            tokens = re.search(r"(\d+) input tokens", message)
            assert tokens is not None and int(tokens[1]) > 4096, message


def test_api_key_required_everywhere_but_health(served: Served) -> None:
    with httpx.Client(base_url=served.base_url, timeout=30) as c:
        for method, path in (
            ("GET", "/"),
            ("GET", "/metrics"),
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/generate"),
            ("POST", "/batch_generate"),
        ):
            r = c.request(method, path, json={})
            _error(r, 401)
            r = c.request(method, path, json={}, headers={"Authorization": "Bearer wrong"})
            _error(r, 401)
        assert c.get("/health").status_code == 200


def test_unknown_route_is_404(served: Served) -> None:
    with served.client(timeout=30) as c:
        _error(c.get("/v1/nope"), 404)
