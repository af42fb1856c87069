"""The gateway through faults: a dead replica, a replica failing mid-stream or going
quiet, no ready replica, replicas coming and going, and graceful drain."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from gateway_harness import (
    MODEL,
    RunningGateway,
    dead_url,
    replica,
    start_faulty_replica,
    wait_for,
)

from raylm.gateway.limits import GatewayLimits
from raylm.replica import ReplicaState

CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


def sse_events(raw: bytes) -> list[str]:
    return [e.strip()[6:] for e in raw.decode().split("\n\n") if e.strip().startswith("data: ")]


def test_dead_replica_is_retried_on_another(replica_url: str) -> None:
    reps = [replica(dead_url(), "dead"), replica(replica_url, "live")]
    # Ejected for longer than the test: the dead replica fails exactly once.
    with RunningGateway(reps, eject_s=600) as gw, gw.client() as c:
        for i in range(4):
            r = c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3, "temperature": 0})
            assert r.status_code == 200, (i, r.text)
            r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 200, (i, r.text)
        with c.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 3,
                                                         "stream": True}) as s:  # fmt: skip
            assert s.status_code == 200 and sse_events(s.read())[-1] == "[DONE]"
        assert gw.metric("raylm_replica_requests_total", replica="dead") >= 1
        assert gw.metric("raylm_failovers_total", replica="dead") >= 1
        retries = sum(
            gw.metric("raylm_retries_total", route=r) for r in ("chat", "generate", "completions")
        )
        # Ejected after its failure: the dead one is not tried again by later requests.
        assert retries == 1
        root = c.get("/").json()
        assert {r["replica_id"]: r["routable"] for r in root["replicas"]} == {
            "dead": False,
            "live": True,
        }


def test_replica_answering_503_is_retried(replica_url: str) -> None:
    with RunningGateway([]) as gw:
        server, url = gw.call(start_faulty_replica("503"))
        gw.source.set([replica(url, "busy"), replica(replica_url, "live")])
        gw.call(gw.gateway.refresh())
        with gw.client() as c:
            for _ in range(3):
                r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
                assert r.status_code == 200, r.text
        assert gw.metric("raylm_failovers_total", replica="busy") >= 1
        assert gw.metric("raylm_retries_total", route="completions") >= 1
        gw.close_server(server)


def test_a_replica_failing_with_500_is_a_bad_gateway_never_a_500() -> None:
    # vLLM answers 500 to a request in flight when its engine dies (EngineDeadError). Not
    # retried: a request that kills an engine would kill the next one too.
    with RunningGateway([]) as gw:
        server, url = gw.call(start_faulty_replica("500"))
        gw.source.set([replica(url, "dying")])
        gw.call(gw.gateway.refresh())
        with gw.client() as c:
            for path, body in [
                ("/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
                ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "stream": True}),
                ("/v1/chat/completions", {**CHAT, "max_tokens": 2}),
                ("/generate", {"prompt": "Hi", "max_tokens": 2}),
            ]:
                r = c.post(path, json=body)
                assert r.status_code == 502, (path, r.status_code, r.text)
                err = r.json()["error"]
                assert err["type"] == "upstream_error", err
                assert "dying" in err["message"] and "EngineCore" in err["message"], err
        assert gw.metric("raylm_retries_total", route="completions") == 0
        gw.close_server(server)


def test_a_connection_the_replica_closed_as_idle_is_not_a_failed_replica() -> None:
    # Seen on a GPU host: a request went out on a pooled connection as vLLM closed it for
    # idling; the gateway set the healthy replica aside and its peer took all the work.
    with RunningGateway([], eject_s=600) as gw:
        server, url = gw.call(start_faulty_replica("idle-close"))
        gw.source.set([replica(url, "only")])
        gw.call(gw.gateway.refresh())
        with gw.client() as c:
            for i in range(3):  # the 2nd and 3rd go out on the connection the 1st used
                r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
                assert r.status_code == 200, (i, r.text)
        assert gw.metric("raylm_failovers_total", replica="only") == 0
        assert gw.metric("raylm_retries_total", route="completions") == 0
        gw.close_server(server)


def test_without_retry_a_dead_replica_gives_503(replica_url: str) -> None:
    reps = [replica(dead_url(), "dead")]
    with RunningGateway(reps, retry_on_failure=False) as gw, gw.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3})
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        err = r.json()["error"]
        assert "dead" in err["message"] and err["code"] == "replica_failed"
        assert gw.metric("raylm_retries_total", route="chat") == 0


@pytest.mark.parametrize("mode", ["drop", "truncated", "hang"])
def test_stream_failing_midway_ends_with_error_event(mode: str) -> None:
    with RunningGateway([], stream_idle_timeout_s=1.0) as gw:
        server, url = gw.call(start_faulty_replica(mode))
        gw.source.set([replica(url, "flaky")])
        gw.call(gw.gateway.refresh())
        # The client's read timeout is the bound: a hanging gateway fails this test.
        with (
            gw.client(timeout=15) as c,
            c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s,
        ):
            assert s.status_code == 200
            events = sse_events(s.read())
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Par"
        last = json.loads(events[-1])
        assert "flaky" in last["error"]["message"]
        assert gw.metric("raylm_stream_errors_total", route="chat") == 1
        wait_for(lambda: gw.gateway.active_requests == 0, 5)
        # The official client surfaces it as an error, not a silent short answer.
        oai = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=15)
        with pytest.raises(openai.APIError, match=r"mid-stream|before it was complete"):
            for _ in oai.chat.completions.create(model=MODEL, stream=True, **CHAT):  # type: ignore[call-overload]
                pass
        gw.close_server(server)


def test_no_ready_replica_then_ready_then_dead(replica_url: str) -> None:
    starting = replica(replica_url, "r0", ReplicaState.STARTING, detail="loading weights")
    with RunningGateway([starting], refresh_interval_s=0.2) as gw, gw.client() as c:
        h = c.get("/health")
        assert h.status_code == 503 and h.headers["Retry-After"]
        assert h.json()["missing"] == [MODEL] and "loading weights" in h.json()["message"]
        r = c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert "r0 starting" in r.json()["error"]["message"]
        assert c.get("/v1/models").json()["data"] == []

        gw.source.set([replica(replica_url, "r0")])
        wait_for(lambda: c.get("/health").status_code == 200, 5)
        assert c.post("/generate", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200

        gw.source.set([replica(replica_url, "r0", ReplicaState.DEAD, restarts=1)])
        wait_for(lambda: c.get("/health").status_code == 503, 5)
        assert c.get("/").json()["replicas"][0]["state"] == "dead"
        assert gw.metric("raylm_replica_restarts_total", replica="r0", model=MODEL) == 1


def test_source_failure_keeps_the_last_table(replica_url: str) -> None:
    class Broken:
        def __init__(self) -> None:
            self.fail = False

        async def snapshot(self) -> list:  # type: ignore[type-arg]
            if self.fail:
                raise ConnectionError("controller unreachable")
            return [replica(replica_url)]

    with RunningGateway([], refresh_interval_s=0.1) as gw:
        broken = Broken()
        gw.gateway.source = broken
        gw.call(gw.gateway.refresh())
        broken.fail = True
        wait_for(lambda: "controller unreachable" in gw.gateway.refresh_error, 5)
        with gw.client() as c:
            assert c.get("/health").status_code == 200
            assert c.post("/generate", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_requests_spread_over_replicas(replica_url: str) -> None:
    # Two entries for the same engine: the policy, not the engine, is under test.
    reps = [replica(replica_url, "a"), replica(replica_url, "b")]
    with RunningGateway(reps, limits=GatewayLimits(max_prompts=8)) as gw, gw.client() as c:
        r = c.post("/batch_generate", json={"prompts": ["Hi"] * 8, "max_tokens": 2})
        assert r.status_code == 200
        a = gw.metric("raylm_replica_requests_total", replica="a")
        b = gw.metric("raylm_replica_requests_total", replica="b")
        assert a == b == 4  # all dispatched before any finished: strictly alternating


def test_drain_finishes_in_flight_and_refuses_new(replica_url: str) -> None:
    with RunningGateway([replica(replica_url)]) as gw, gw.client() as c:
        slow: dict[str, httpx.Response] = {}

        def long_request() -> None:
            slow["r"] = c.post(
                "/v1/completions",
                json={"prompt": "Once", "max_tokens": 128, "ignore_eos": True},
            )

        t = threading.Thread(target=long_request)
        t.start()
        wait_for(lambda: gw.gateway.active_requests == 1, 30)
        drained = asyncio.run_coroutine_threadsafe(gw.gateway.drain(120), gw.loop)
        wait_for(lambda: gw.gateway.draining, 5)
        refused = c.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        assert refused.json()["error"]["code"] == "draining"
        assert c.get("/health").json()["status"] == "draining"
        assert drained.result(120) is True
        t.join(10)
        assert slow["r"].status_code == 200, slow["r"].text
        assert slow["r"].json()["usage"]["completion_tokens"] == 128


def test_drain_is_bounded() -> None:
    with RunningGateway([], stream_idle_timeout_s=60) as gw:
        server, url = gw.call(start_faulty_replica("hang"))
        gw.source.set([replica(url, "stuck")])
        gw.call(gw.gateway.refresh())
        results: list[bytes] = []

        def stream() -> None:
            with (
                gw.client(timeout=30) as c,
                c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s,
            ):
                results.append(s.read())

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        wait_for(lambda: gw.gateway.active_requests == 1, 10)
        assert gw.call(gw.gateway.drain(0.5)) is False
        assert gw.gateway.active_requests == 1
    # Stopping past the bound ends the leftover stream with an error event.
    t.join(15)
    last = json.loads(sse_events(results[0])[-1])
    assert "stopped" in last["error"]["message"]
    server.close()


@pytest.mark.parametrize("stream", [False, True])
def test_silent_replica_times_out_with_504(stream: bool) -> None:
    with RunningGateway([], request_timeout_s=1.0, stream_idle_timeout_s=1.0) as gw:
        server, url = gw.call(start_faulty_replica("silent"))
        gw.source.set([replica(url, "mute")])
        gw.call(gw.gateway.refresh())
        with gw.client(timeout=15) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert r.status_code == 504
        assert "mute" in r.json()["error"]["message"]
        # Slow is not dead: no retry, no ejection.
        assert gw.metric("raylm_retries_total", route="chat") == 0
        assert gw.metric("raylm_failovers_total", replica="mute") == 0
        wait_for(lambda: gw.gateway.active_requests == 0, 5)
        gw.close_server(server)


def test_a_retried_request_keeps_its_first_deadline() -> None:
    # The first replica answers 503 after 2 s, so the request is retried on the second,
    # which never answers. The retry gets what is left of request_timeout_s (3 s), not a
    # fresh 3 s: 504 at about 3 s, where a fresh bound would make it 5 s.
    with RunningGateway([], request_timeout_s=3.0, routing="round-robin") as gw:
        late, late_url = gw.call(start_faulty_replica("late-503"))
        mute, mute_url = gw.call(start_faulty_replica("silent"))
        # round-robin's first turn is the second replica by id
        gw.source.set([replica(late_url, "b-late"), replica(mute_url, "a-mute")])
        gw.call(gw.gateway.refresh())
        with gw.client(timeout=30) as c:
            started = time.monotonic()
            r = c.post("/v1/chat/completions", json=CHAT)
            took = time.monotonic() - started
        assert r.status_code == 504, r.text
        assert "a-mute" in r.json()["error"]["message"]
        assert gw.metric("raylm_retries_total", route="chat") == 1
        assert took < 4.5, f"the retry had a fresh deadline: {took:.1f} s"
        wait_for(lambda: gw.gateway.active_requests == 0, 5)
        gw.close_server(late)
        gw.close_server(mute)


def test_client_leaving_mid_stream_frees_the_replica(replica_url: str) -> None:
    with RunningGateway([replica(replica_url)]) as gw, gw.client() as c:
        body = {"prompt": "Once", "max_tokens": 2000, "ignore_eos": True, "stream": True}
        with c.stream("POST", "/v1/completions", json=body) as s:
            chunks = s.iter_bytes()  # kept: dropping it would close the response already
            assert next(chunks).startswith(b"data: ")
            assert gw.gateway.active_requests == 1
        wait_for(lambda: gw.gateway.active_requests == 0, 30)
        assert gw.gateway.table.in_flight("r0") == 0
