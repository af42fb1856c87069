"""The native routes the seeds' users call: /, /health, /metrics, /generate, /batch_generate."""

from __future__ import annotations

import concurrent.futures as cf
import re

import httpx

from raylm.serve.replica_auth import KEY_ENV
from tests.conftest import Served


def test_root_shows_two_ready_replicas(served: Served) -> None:
    with served.client() as c:
        body = c.get("/").json()
    assert body["models"] == [{"model": served.model, "ready_replicas": 2, "replicas": 2}]
    assert {r["state"] for r in body["replicas"]} == {"ready"}
    assert all(r["node"] for r in body["replicas"])
    assert body["uptime_s"] > 0 and body["version"]


def test_health_needs_no_key(served: Served) -> None:
    r = httpx.get(f"{served.base_url}/health", timeout=10)
    assert r.status_code == 200, r.text


def test_generate(served: Served) -> None:
    with served.client() as c:
        r = c.post(
            "/generate",
            json={"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"text", "finish_reason", "usage", "model"}
    assert "Paris" in body["text"]
    assert body["usage"]["completion_tokens"] >= 1


def test_batch_generate_keeps_prompt_order(served: Served) -> None:
    prompts = [f"Count: {n}, {n + 1}, {n + 2}," for n in (10, 20, 30, 40)]
    with served.client() as c:
        r = c.post("/batch_generate", json={"prompts": prompts, "max_tokens": 4, "temperature": 0})
        singles = [
            c.post("/generate", json={"prompt": p, "max_tokens": 4, "temperature": 0}).json()
            for p in prompts
        ]
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["text"] for x in results] == [s["text"] for s in singles]
    assert r.json()["usage"]["completion_tokens"] == sum(
        s["usage"]["completion_tokens"] for s in singles
    )


def _replica_success_counts(served: Served) -> dict[int, float]:
    """vLLM's own finished-request counter on each replica, read from the replica directly."""
    counts: dict[int, float] = {}
    for p in served.engine_pids():
        argv = p.cmdline()
        port = int(argv[argv.index("--port") + 1])
        # A replica answers only with its deployment's private key (see test_replica_key).
        key = p.environ()[KEY_ENV]
        auth = {"Authorization": f"Bearer {key}"}
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=auth, timeout=10).text
        counts[port] = sum(
            float(m) for m in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)", text, re.M)
        )
    return counts


def test_requests_spread_over_both_replicas(served: Served) -> None:
    before = _replica_success_counts(served)
    assert len(before) == 2, f"expected 2 replica engines, found {before}"

    def one(i: int) -> int:
        with served.client() as c:
            r = c.post("/generate", json={"prompt": f"Hello {i}", "max_tokens": 16})
            return r.status_code

    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes == [200] * 16
    after = _replica_success_counts(served)
    gained = {port: after[port] - before[port] for port in before}
    # Fewest-in-flight routing under 8 concurrent requests must use both replicas.
    assert all(g >= 3 for g in gained.values()), gained


def test_metrics_count_requests_tokens_and_replicas(served: Served) -> None:
    with served.client() as c:
        c.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
        text = c.get("/metrics").text
    assert re.search(r'raylm_requests_total\{route="generate",status="200"\} [1-9]', text)
    assert "raylm_request_latency_seconds_bucket" in text
    assert "raylm_time_to_first_token_seconds" in text
    assert re.search(r"raylm_completion_tokens_total\{[^}]*\} [1-9]", text)
    assert re.search(r"raylm_prompt_tokens_total\{[^}]*\} [1-9]", text)
    assert len(re.findall(r'raylm_replica_state\{[^}]*state="ready"\} 1\.0', text)) == 2
