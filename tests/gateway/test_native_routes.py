"""The native routes the seeds' users call: /, /health, /metrics, /generate,
/batch_generate, on a real replica."""

from __future__ import annotations

import httpx
from gateway_harness import MODEL, RunningGateway


def test_root_lists_replicas_and_models(client: httpx.Client) -> None:
    body = client.get("/").json()
    assert body["version"] and body["uptime_s"] >= 0
    assert body["models"] == [{"model": MODEL, "ready_replicas": 1, "replicas": 1}]
    (rep,) = body["replicas"]
    assert rep["replica_id"] == "r0" and rep["state"] == "ready" and rep["node"] == "127.0.0.1"
    assert rep["restarts"] == 2 and rep["in_flight"] == 0


def test_health_ok(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["models"] == {MODEL: {"ready": 1, "replicas": 1}}


def test_generate(client: httpx.Client) -> None:
    r = client.post(
        "/generate",
        json={"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "seed": 1},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"text", "finish_reason", "usage", "model"}
    assert "Paris" in body["text"]
    assert body["finish_reason"] == "length" and body["model"] == MODEL
    assert body["usage"]["completion_tokens"] == 5


def test_generate_stop_and_top_p(client: httpx.Client) -> None:
    r = client.post(
        "/generate",
        json={
            "prompt": "The capital of France is",
            "max_tokens": 20,
            "temperature": 0,
            "top_p": 0.9,
            "stop": ["."],
            "model": MODEL,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["finish_reason"] == "stop" and "." not in r.json()["text"]


def test_batch_generate_keeps_prompt_order(client: httpx.Client) -> None:
    prompts = ["The capital of France is", "1, 2, 3, 4,", "The capital of Germany is"]
    r = client.post("/batch_generate", json={"prompts": prompts, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 3
    # Each result must be the same as that prompt's own /generate answer.
    for prompt, result in zip(prompts, body["results"], strict=True):
        alone = client.post("/generate", json={"prompt": prompt, "max_tokens": 4, "temperature": 0})
        assert result["text"] == alone.json()["text"]
    assert "Paris" in body["results"][0]["text"] and "Berlin" in body["results"][2]["text"]
    assert body["usage"]["completion_tokens"] == sum(
        x["usage"]["completion_tokens"] for x in body["results"]
    )


def test_metrics(client: httpx.Client, gw: RunningGateway) -> None:
    client.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
    client.post("/generate", json={"prompt": 5})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'raylm_requests_total{route="generate",status="200"}' in text
    assert 'raylm_requests_total{route="generate",status="400"}' in text
    assert "raylm_request_latency_seconds_bucket" in text
    assert "raylm_requests_in_flight 0.0" in text
    assert (
        f'raylm_replica_state{{model="{MODEL}",node="127.0.0.1",replica="r0",state="ready"}} 1.0'
        in text
    )
    assert f'raylm_replica_restarts_total{{model="{MODEL}",replica="r0"}} 2.0' in text
    assert gw.metric("raylm_prompt_tokens_total", model=MODEL) > 0
    assert gw.metric("raylm_replica_requests_total", replica="r0") > 0
