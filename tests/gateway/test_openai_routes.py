"""The official openai client against the gateway, in front of a real vLLM replica."""

from __future__ import annotations

import json

import openai
import pytest
from gateway_harness import MODEL, RunningGateway, wait_for

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_answers_paris(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_chat_without_model_uses_the_only_one(oai: openai.OpenAI) -> None:
    # The body goes through untouched: vLLM itself fills in its only model.
    out = oai.chat.completions.create(
        model=openai.omit, messages=QUESTION, temperature=0, max_tokens=20
    )
    assert out.model == MODEL
    assert "Paris" in (out.choices[0].message.content or "")


def test_chat_stream_counts_usage(oai: openai.OpenAI, gw: RunningGateway) -> None:
    before = gw.metric("raylm_completion_tokens_total", model=MODEL)
    ttft_before = gw.metric("raylm_time_to_first_token_seconds_count", route="chat")
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert "Paris" in text
    assert usage is not None
    # The client stops reading at [DONE] and may close at once: the gateway must have
    # counted the usage before it passed [DONE] on.
    after = gw.metric("raylm_completion_tokens_total", model=MODEL)
    assert after == before + usage.completion_tokens
    assert gw.metric("raylm_time_to_first_token_seconds_count", route="chat") == ttft_before + 1


def test_extra_fields_pass_through(oai: openai.OpenAI) -> None:
    # The seeds send chat_template_kwargs; vLLM accepts it, so the gateway must not drop it.
    out = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        max_tokens=20,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "top_k": 1},
    )
    assert "Paris" in (out.choices[0].message.content or "")


def test_completions(oai: openai.OpenAI, gw: RunningGateway) -> None:
    before = gw.metric("raylm_prompt_tokens_total", model=MODEL)
    out = oai.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5
    )
    assert "Paris" in out.choices[0].text
    assert out.usage is not None
    assert gw.metric("raylm_prompt_tokens_total", model=MODEL) == before + out.usage.prompt_tokens


def test_completions_stream(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.completions.create(
            model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=5, stream=True
        )
    )
    assert len(chunks) >= 2  # relayed as it came, not buffered into one answer
    assert "Paris" in "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_models(oai: openai.OpenAI) -> None:
    models = oai.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra is not None and models[0].model_extra["max_model_len"] == 2048


def test_unknown_model_is_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="no-such-model", messages=QUESTION, max_tokens=5)
    assert "no-such-model" in str(e.value)
    assert e.value.body is not None and e.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_vllm_validation_error_passes_through(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=MODEL, prompt="hi", max_tokens=5000)
    assert "5000" in str(e.value) and "2048" in str(e.value)


def test_stream_bad_request_is_a_plain_4xx(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=MODEL, prompt="hi", max_tokens=5000, stream=True)


def test_each_replicas_engine_is_on_the_gateways_metrics(
    oai: openai.OpenAI, gw: RunningGateway
) -> None:
    # The same long prompt twice: the engine's prefix cache answers the second from cache,
    # and the gateway's /metrics shows that engine's counters under the replica's name.
    prompt = "The history of the Roman roads, told slowly and in order. " * 40
    for _ in range(2):
        oai.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    labels = {"replica": "r0", "model": MODEL}
    wait_for(lambda: gw.metric("raylm_engine_prefix_cache_hits_total", **labels) > 0, 10)
    queries = gw.metric("raylm_engine_prefix_cache_queries_total", **labels)
    assert queries >= gw.metric("raylm_engine_prefix_cache_hits_total", **labels) > 0
    # Every generated token, a stream's without usage included.
    assert gw.metric("raylm_engine_generation_tokens_total", **labels) >= 2
    usage = gw.gateway.metrics.registry.get_sample_value("raylm_engine_kv_cache_usage", labels)
    assert usage is not None and 0 <= usage <= 1
    text = gw.client().get("/metrics").text
    assert 'raylm_engine_requests_waiting{model="smollm2-135m-instruct",replica="r0"}' in text


def test_usage_is_read_from_the_answer_without_parsing_all_of_it() -> None:
    from raylm.gateway.openai_routes import usage_of

    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    # A quote inside a string is escaped, so text that says "usage": is never the key.
    answer = json.dumps(
        {"choices": [{"text": 'say "usage": {"prompt_tokens": 99}'}], "usage": usage, "x": None}
    ).encode()
    assert usage_of(answer) == usage
    assert usage_of(b'{"choices": [], "usage": null}') is None
    assert usage_of(b'{"choices": []}') is None
    assert usage_of(b'{"usage": {"prompt_tokens": 7,') is None  # cut short
    assert usage_of(b'{"usage": "\xff"}') is None  # not UTF-8
