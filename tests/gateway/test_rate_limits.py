"""Per-key API keys and rate limits: a key over its limit gets 429 with Retry-After in
OpenAI's error shape; other keys go on unaffected; tokens are charged from the usage the
replica reports; no key value ever shows."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gateway_harness import MODEL, RunningGateway, replica
from pydantic import SecretStr, ValidationError

from raylm.config import load_spec
from raylm.errors import ConfigError
from raylm.gateway import GatewayServer, GatewaySettings, StaticReplicaSource, create_gateway
from raylm.gateway.keys import ClientKey
from raylm.gateway.rate_limits import RateLimits

A_KEY = "sk-team-a-4f1e9c2b"
B_KEY = "sk-team-b-8d03a7e6"
T_KEY = "sk-team-t-c5b21f90"
KEYS = [
    ClientKey(name="team-a", key=SecretStr(A_KEY), requests_per_minute=2),
    ClientKey(name="team-b", key=SecretStr(B_KEY)),
    ClientKey(name="team-t", key=SecretStr(T_KEY), tokens_per_minute=5),
]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def limited(replica_url: str) -> Iterator[RunningGateway]:
    with RunningGateway([replica(replica_url)], api_keys=KEYS) as g:
        yield g


def _post(gw: RunningGateway, key: str, path: str = "/v1/chat/completions") -> httpx.Response:
    body = CHAT if path == "/v1/chat/completions" else {"prompt": "Hi", "max_tokens": 4}
    with gw.client(headers={"Authorization": f"Bearer {key}"}) as c:
        return c.post(path, json=body)


def test_a_key_over_its_request_rate_gets_429_and_the_others_do_not(
    limited: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert [_post(limited, A_KEY).status_code for _ in range(2)] == [200, 200]
    refused = _post(limited, A_KEY)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "team-a" in error["message"] and "limit 2" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    # The OpenAI client sees its own RateLimitError (it retries 429s unless told not to).
    oai = openai.OpenAI(base_url=limited.url + "/v1", api_key=A_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        oai.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    with limited.client(headers={"Authorization": f"Bearer {A_KEY}"}) as c:
        assert c.post("/generate", json={"prompt": "Hi", "max_tokens": 2}).status_code == 429
        # Routes that reach no replica are not counted.
        assert c.get("/v1/models").status_code == 200
    # Team b, unlimited, is untouched by team a's refusals.
    assert all(_post(limited, B_KEY).status_code == 200 for _ in range(4))
    with limited.client(headers={"Authorization": f"Bearer {B_KEY}"}) as c:
        metrics = c.get("/metrics").text
    assert 'raylm_rate_limited_total{key="team-a",limit="requests"} 3.0' in metrics
    for key in (A_KEY, B_KEY, T_KEY):
        assert key not in metrics and key not in caplog.text
    assert A_KEY not in repr(limited.gateway.settings)


def test_tokens_are_charged_from_usage_streams_included(limited: RunningGateway) -> None:
    # 5 tokens a minute: the first answer (prompt and completion over 5) passes and puts
    # the key in debt; the next is refused until the bucket refills.
    oai = openai.OpenAI(base_url=limited.url + "/v1", api_key=T_KEY, max_retries=0)
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert usage and usage[0].total_tokens > 5
    refused = _post(limited, T_KEY)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    # Debt of total_tokens - 5 at 5 a minute: a wait of at least that many minutes.
    assert int(refused.headers["retry-after"]) >= (usage[0].total_tokens - 5) * 12


def test_unknown_keys_are_refused_with_several_keys(limited: RunningGateway) -> None:
    for auth in (None, "Bearer sk-team-z-00000000", f"Bearer {A_KEY}x", f"Basic {B_KEY}"):
        with limited.client(headers={"Authorization": auth} if auth else {}) as c:
            r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_buckets_refill_and_a_refusal_costs_nothing() -> None:
    now = [0.0]
    limits = RateLimits(
        [ClientKey(name="a", key=SecretStr("k1"), requests_per_minute=60, tokens_per_minute=600)],
        clock=lambda: now[0],
    )
    assert all(limits.admit("a") is None for _ in range(60))  # a minute's burst
    refusal = limits.admit("a")
    assert refusal is not None and (refusal.limit, refusal.retry_after_s) == ("requests", 1)
    now[0] += 1.0  # one request refilled, none taken by the refusals
    assert limits.admit("a") is None and limits.admit("a") is not None
    limits.charge("a", 900)  # 300 in debt: 30 s at 10 tokens a second
    now[0] += 2.0
    refusal = limits.admit("a")
    assert refusal is not None and (refusal.limit, refusal.retry_after_s) == ("tokens", 29)
    assert limits.admit("b") is None  # a key without limits


def test_keys_must_differ_and_limits_need_one_worker(tmp_path: Path) -> None:
    spec = tmp_path / "raylm.toml"
    spec.write_text(
        '[serve]\n[[serve.keys]]\nname = "a"\nkey = "k-one-1"\n'
        '[[serve.keys]]\nname = "a"\nkey = "k-two-2"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_spec(spec, {})
    assert "given more than once: a" in str(e.value.why) and "k-one-1" not in str(e.value)
    spec.write_text('[[serve.keys]]\nname = "a"\nkey = "k-one-1"\nrequests_per_minute = 0\n')
    with pytest.raises(ConfigError) as e:
        load_spec(spec, {})
    assert "keys.0.requests_per_minute" in str(e.value.why)
    spec.write_text(
        'gateway_workers = 2\n[[keys]]\nname = "a"\nkey = "k-one-1"\nrequests_per_minute = 5\n'
    )
    with pytest.raises(ConfigError) as e:
        load_spec(spec, {})
    assert "need gateway_workers = 1" in str(e.value.why)
    with pytest.raises(ValidationError):
        GatewaySettings(
            api_key=SecretStr("same"), api_keys=[ClientKey(name="x", key=SecretStr("same"))]
        )
    gateway = create_gateway(StaticReplicaSource([]), GatewaySettings(api_keys=KEYS))
    with pytest.raises(ConfigError) as e:
        GatewayServer(gateway, workers=2)
    assert "team-a, team-t" in e.value.what and e.value.command == "raylm serve --gateway-workers 1"
