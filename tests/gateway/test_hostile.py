"""Nothing one client sends can take the replica down, hold the gateway's resources, or
count as the gateway's fault: parse errors of every kind, requests over a limit, clients
that leave, connections that stall."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_harness import MAX_MODEL_LEN, MODEL, RunningGateway, dead_url, raw_request, replica

from raylm.gateway.limits import GatewayLimits
from raylm.serve.health import parse_engine_load

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ROUTES = [CHAT, COMPLETIONS, "/generate", "/batch_generate"]


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    return dict(err)


def _nested(depth: int) -> bytes:
    return b'{"model":"m","messages":' + b"[" * depth + b"]" * depth + b',"prompt":"x"}'


@pytest.mark.parametrize("path", ROUTES)
def test_json_nested_past_any_parser_is_a_400(client: httpx.Client, path: str) -> None:
    r = client.post(path, content=_nested(100_000), headers={"Content-Type": "application/json"})
    assert "64 levels" in assert_error(r, 400, "json_too_deep")["message"]


def test_json_nested_just_past_the_limit_is_a_400(client: httpx.Client) -> None:
    assert_error(client.post(CHAT, content=_nested(64)), 400, "json_too_deep")
    # One level less reaches the replica, which judges the messages itself.
    assert client.post(CHAT, content=_nested(62)).json()["error"]["code"] != "json_too_deep"


@pytest.mark.parametrize(
    "body", [b'{"prompt":"\xff\xfe"}', b"\xff\xfe{}", b'{"prompt":"\xed\xa0\x80"}']
)
def test_invalid_utf8_is_a_400(client: httpx.Client, body: bytes) -> None:
    assert_error(client.post(COMPLETIONS, content=body), 400, "invalid_json")


@pytest.fixture
def small_body_gateway() -> Iterator[RunningGateway]:
    with RunningGateway([replica(dead_url())], limits=GatewayLimits(max_body_bytes=65536)) as g:
        yield g


def test_a_huge_body_is_refused_before_it_is_read(small_body_gateway: RunningGateway) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size shows only as it arrives
        nonlocal sent
        for _ in range(512):
            sent += 16384
            yield b"x" * 16384

    with small_body_gateway.client(timeout=30) as c:
        try:
            r = c.post(COMPLETIONS, content=chunks())
        except httpx.HTTPError:
            pass  # the gateway may close before the client finished sending: also fine
        else:
            assert_error(r, 413, "request_too_large")
    assert sent < 512 * 16384, "the gateway read the whole 8 MiB body"
    r = small_body_gateway.client().post(COMPLETIONS, content=b"x" * 70000)
    assert_error(r, 413, "request_too_large")


@pytest.mark.parametrize(
    ("path", "extra", "code", "param"),
    [
        (CHAT, {"n": 1000}, "n_over_limit", "n"),
        (COMPLETIONS, {"n": 17}, "n_over_limit", "n"),
        (COMPLETIONS, {"best_of": 1000}, "best_of_over_limit", "best_of"),
        (CHAT, {"max_tokens": MAX_MODEL_LEN + 1}, "max_tokens_over_context", "max_tokens"),
        (
            CHAT,
            {"max_completion_tokens": 10**9},
            "max_tokens_over_context",
            "max_completion_tokens",
        ),
        ("/generate", {"max_tokens": MAX_MODEL_LEN + 1}, "max_tokens_over_context", "max_tokens"),
    ],
)
def test_requests_over_a_limit_are_refused_naming_it(
    client: httpx.Client, path: str, extra: dict[str, Any], code: str, param: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    body.update(extra)
    if path == "/generate":
        body.pop("messages")
    err = assert_error(client.post(path, json=body), 400, code)
    assert err["param"] == param
    # The message names the limit (its value), so the client knows what to change.
    assert "16" in err["message"] or str(MAX_MODEL_LEN) in err["message"], err["message"]


def test_the_tokens_one_request_may_ask_for_are_capped() -> None:
    limits = GatewayLimits(max_request_tokens=1000)
    with RunningGateway([replica(dead_url())], limits=limits) as g, g.client() as c:
        body = {"model": MODEL, "prompt": ["a", "b"], "n": 2, "max_tokens": 300}
        err = assert_error(c.post(COMPLETIONS, json=body), 400, "request_tokens_over_limit")
        assert "1200" in err["message"] and "1000" in err["message"]
        # Without max_tokens a sequence may run to the context: that counts.
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        err = assert_error(c.post(CHAT, json=body), 400, "request_tokens_over_limit")
        assert str(MAX_MODEL_LEN) in err["message"]


def _engine_running(replica_url: str) -> int:
    load = parse_engine_load(httpx.get(replica_url + "/metrics", timeout=10).text)
    assert load is not None
    return load.running


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_stops_the_replica_within_2s(
    gw: RunningGateway, replica_url: str, stream: bool
) -> None:
    before = gw.metric("raylm_requests_total", route="completions", status="499")
    body = (
        b'{"model":"' + MODEL.encode() + b'","prompt":"Once upon a time","max_tokens":1500,'
        b'"ignore_eos":true,"stream":' + (b"true" if stream else b"false") + b"}"
    )
    s = raw_request(gw.url, COMPLETIONS, body)
    deadline = time.monotonic() + 60
    while _engine_running(replica_url) == 0:
        assert time.monotonic() < deadline, "the request never reached the engine"
        time.sleep(0.2)
    s.close()  # the client gives up
    left = time.monotonic()
    while _engine_running(replica_url) != 0:
        assert time.monotonic() - left < 5, "vLLM kept generating for a client that left"
        time.sleep(0.1)
    assert time.monotonic() - left <= 2.0
    deadline = time.monotonic() + 10
    while gw.metric("raylm_requests_total", route="completions", status="499") <= before:
        assert time.monotonic() < deadline, "the disconnect was not counted as 499"
        time.sleep(0.1)


def test_a_client_leaving_while_sending_its_body_is_a_499_not_an_error(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    before = gw.metric("raylm_requests_total", route="completions", status="499")
    errors_before = gw.metric("raylm_requests_total", route="completions", status="500")
    host, port = gw.url.removeprefix("http://").split(":")
    with caplog.at_level(logging.WARNING, logger="raylm"):
        s = socket.create_connection((host, int(port)))
        s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"prom')
        time.sleep(0.3)
        s.close()
        deadline = time.monotonic() + 10
        while gw.metric("raylm_requests_total", route="completions", status="499") <= before:
            assert time.monotonic() < deadline, "the hang-up was not counted as 499"
            time.sleep(0.1)
    assert gw.metric("raylm_requests_total", route="completions", status="500") == errors_before
    assert "gateway error" not in caplog.text


def test_stalled_connections_are_closed_in_time_while_health_answers() -> None:
    limits = GatewayLimits(header_timeout_s=1, body_timeout_s=1)
    with RunningGateway([replica(dead_url())], limits=limits) as g:
        host, port = g.url.removeprefix("http://").split(":")
        stalls = [
            b"",  # connects and sends nothing
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n",  # half the headers
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # no body
        ]
        socks = []
        for i in range(50):
            s = socket.create_connection((host, int(port)))
            s.sendall(stalls[i % 3])
            socks.append(s)
        opened = time.monotonic()
        # The gateway still answers everyone else meanwhile.
        assert httpx.get(g.url + "/health", timeout=5).status_code == 200
        for s in socks:
            s.settimeout(5)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
            s.close()
        assert time.monotonic() - opened < 3.5


def test_connections_past_the_cap_get_503_with_retry_after() -> None:
    with RunningGateway([replica(dead_url())], limits=GatewayLimits(max_connections=4)) as g:
        host, port = g.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(4)]
        time.sleep(0.3)
        r = httpx.get(g.url + "/health", timeout=5)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "too_many_connections"
        for s in held:
            s.close()
        time.sleep(0.3)
        assert httpx.get(g.url + "/health", timeout=5).status_code == 200
