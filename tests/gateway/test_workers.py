"""Several gateway processes on one port (`gateway_workers`): they see one replica set,
which changes for all of them at once; `/metrics` on any of them counts every worker's
requests; a worker that dies is started again; and SIGTERM drains every worker's requests
in flight before it exits."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
from typing import Any

import httpx
import psutil
import pytest
from gateway_harness import RunningGateway, dead_url, replica, wait_for
from prometheus_client.parser import text_string_to_metric_families

from raylm.errors import ConfigError
from raylm.gateway.server import bind_socket
from raylm.replica import ReplicaState

KEY = "workers-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


def _fresh(url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request on a new connection: the kernel picks the worker per connection."""
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as c:
        return c.request(method, path, **kw)


def _views(url: str, n: int = 24) -> dict[int, list[tuple[str, str]]]:
    """Per worker that answered, the replicas (id, state) it routes over."""
    seen: dict[int, list[tuple[str, str]]] = {}
    for _ in range(n):
        body = _fresh(url, "GET", "/").json()
        assert body["workers"] == 2, body
        seen[body["worker"]] = [(r["replica_id"], r["state"]) for r in body["replicas"]]
    return seen


def _chat_total(metrics: str, worker: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "raylm_requests_total"
        and s.labels == {"route": "chat", "status": "200", "worker": worker}
    )


def test_two_workers_share_the_port_the_replicas_and_drain_on_sigterm(replica_url: str) -> None:
    reps = [replica(replica_url, "r0"), replica(dead_url(), "r1", state=ReplicaState.STARTING)]
    with RunningGateway(reps, workers=2, api_key=KEY) as gw:
        assert gw.server.processes is not None
        (pid,) = gw.server.processes.pids
        # Connections land on both workers, and both route over the same replicas.
        views = _views(gw.url)
        assert set(views) == {0, 1}, views
        assert views[0] == views[1] == [("r0", "ready"), ("r1", "starting")]
        # A change of the replica set (the controller's) reaches every worker.
        gw.source.set([replica(replica_url, "r0"), replica(replica_url, "r1")])
        want = [("r0", "ready"), ("r1", "ready")]
        wait_for(lambda: all(v == want for v in _views(gw.url, 8).values()), 10)
        # One events feed, worker 0's, whichever worker answers: that change is in it once.
        feeds = [_fresh(gw.url, "GET", "/dashboard/events").json() for _ in range(8)]
        assert len({f["boot"] for f in feeds}) == 1, feeds
        assert all(
            [(e["kind"], e["replica"]) for e in f["events"]] == [("ready", "r1")] for f in feeds
        ), feeds
        # Requests answered by both workers; any worker's /metrics counts them all.
        # 24 connections: 8 once all landed on one worker (the kernel hashes each one).
        for _ in range(24):
            r = _fresh(gw.url, "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 2})
            assert r.status_code == 200, r.text
        metrics = _fresh(gw.url, "GET", "/metrics").text
        by_worker = [_chat_total(metrics, w) for w in ("0", "1")]
        assert sum(by_worker) == 24 and min(by_worker) > 0, by_worker
        # What every worker knows alike (the replica table) is there once, unlabelled.
        states = [
            s.labels
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
            if s.name == "raylm_replica_state" and s.labels["state"] == "ready"
        ]
        assert sorted(s["replica"] for s in states) == ["r0", "r1"], states
        # Another gateway cannot join the port unnoticed: a plain bind is refused.
        with pytest.raises(ConfigError):
            bind_socket("127.0.0.1", gw.server.port)
        # A worker that dies is started again, and the port keeps answering meanwhile.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: gw.server.processes and gw.server.processes.pids != [pid], 30)
        wait_for(lambda: set(_views(gw.url, 8)) == {0, 1}, 60)
        (pid,) = gw.server.processes.pids

        # SIGTERM (what `raylm serve` sends on Ctrl-C) drains every worker's streams.
        def stream() -> tuple[int, list[str]]:
            body = {
                "prompt": "Once",
                "max_tokens": 48,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            with (
                httpx.Client(base_url=gw.url, timeout=120, headers=AUTH) as c,
                c.stream("POST", "/v1/completions", json=body) as s,
            ):
                raw = s.read().decode()
            return s.status_code, [e[6:] for e in raw.split("\n\n") if e.startswith("data: ")]

        with cf.ThreadPoolExecutor(10) as pool:
            streams = [pool.submit(stream) for _ in range(10)]
            wait_for(lambda: _busy_workers(gw.url) == {0, 1}, 60)
            stopped = gw.call(gw.server.stop(60))
            answers = [f.result(120) for f in streams]
        assert stopped is True
        for status, events in answers:
            assert status == 200 and events[-1] == "[DONE]", events[-3:]
            assert json.loads(events[-2])["usage"]["completion_tokens"] == 48, events[-2]
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def _busy_workers(url: str) -> set[int]:
    """The workers seen with a request in flight (a few fresh connections' worth)."""
    busy = set()
    for _ in range(8):
        try:
            body = _fresh(url, "GET", "/").json()
        except httpx.HTTPError:
            continue
        if any(r["in_flight"] for r in body["replicas"]):
            busy.add(body["worker"])
    return busy
