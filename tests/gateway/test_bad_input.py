"""Every kind of bad input gets a 4xx with an OpenAI-style error body: never a 500, a
traceback or a hang."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_harness import MODEL

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]
LONG_PROMPT = "hello " * 2500  # > 2048 tokens, the replica's context


def assert_error(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for word in words:
        assert word in err["message"], err["message"]
    return dict(err)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/generate", "/batch_generate"])
@pytest.mark.parametrize(
    ("body", "word"),
    [(b"{not json", "Malformed JSON"), (b"[1, 2]", "JSON object"), (b"", "Malformed JSON")],
)
def test_malformed_bodies(client: httpx.Client, path: str, body: bytes, word: str) -> None:
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, word)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": MODEL}, "messages"),
        (COMPLETIONS, {"model": MODEL}, "prompt"),
        (CHAT, {"model": 7, "messages": MSG}, "model"),
        (CHAT, {"messages": MSG, "stream": "yes"}, "stream"),
        ("/generate", {}, "prompt"),
        ("/generate", {"prompt": 12}, "prompt"),
        ("/generate", {"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
        ("/generate", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("/generate", {"prompt": "hi", "temperature": "hot"}, "temperature"),
        ("/generate", {"prompt": "hi", "top_p": 2}, "top_p"),
        ("/generate", {"prompt": "hi", "bogus": 1}, "bogus"),
        ("/generate", {"prompt": "hi", "model": 3}, "model"),
        ("/batch_generate", {"prompts": "one"}, "prompts"),
        ("/batch_generate", {"prompts": ["a", 2]}, "prompts.1"),
        ("/batch_generate", {"prompt": "a"}, "prompts"),
    ],
)
def test_wrong_fields(client: httpx.Client, path: str, body: dict[str, Any], param: str) -> None:
    err = assert_error(client.post(path, json=body), 400)
    assert err["param"] == param


def test_vllm_rejects_wrong_type_with_its_own_400(client: httpx.Client) -> None:
    r = client.post(COMPLETIONS, json={"prompt": "hi", "max_tokens": "many"})
    assert_error(r, 400, "max_tokens")


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/generate", "/batch_generate"])
def test_unknown_model_is_404(client: httpx.Client, path: str) -> None:
    body = {"model": "gpt-17", "messages": MSG, "prompt": "hi", "prompts": ["hi"]}
    body = {k: v for k, v in body.items() if k in _fields(path)}
    err = assert_error(client.post(path, json=body), 404, "gpt-17", MODEL)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def _fields(path: str) -> set[str]:
    return {
        CHAT: {"model", "messages"},
        COMPLETIONS: {"model", "prompt"},
        "/generate": {"model", "prompt"},
        "/batch_generate": {"model", "prompts"},
    }[path]


def test_empty_batch(client: httpx.Client) -> None:
    err = assert_error(client.post("/batch_generate", json={"prompts": []}), 400, "empty")
    assert err["code"] == "empty_batch"


def test_batch_over_limit(client: httpx.Client) -> None:
    r = client.post("/batch_generate", json={"prompts": ["a"] * 5, "max_tokens": 1})
    err = assert_error(r, 400, "5 prompts", "limit of 4")
    assert err["code"] == "batch_too_large"


@pytest.mark.parametrize("path", [COMPLETIONS, "/generate"])
def test_prompt_longer_than_context(client: httpx.Client, path: str) -> None:
    r = client.post(path, json={"prompt": LONG_PROMPT, "max_tokens": 5})
    assert_error(r, 400, "2048", "2049")


def test_batch_with_one_prompt_too_long_names_it(client: httpx.Client) -> None:
    r = client.post("/batch_generate", json={"prompts": ["hi", LONG_PROMPT], "max_tokens": 2})
    err = assert_error(r, 400, "prompts[1]", "2048")
    assert err["param"] == "prompts[1]"


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    assert_error(client.get("/v2/nothing"), 404, "/v2/nothing")
    assert_error(client.get("/generate"), 405, "GET")
    assert_error(client.post("/health"), 405)


def test_oversized_body(client: httpx.Client, gw: Any) -> None:
    limit = gw.gateway.settings.limits.max_body_bytes
    r = client.post("/generate", content=b"x" * (limit + 1))
    assert_error(r, 413)
