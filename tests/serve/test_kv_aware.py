"""kv-aware routing on a real deployment (the shared `raylm serve`, `--routing kv-aware`):
each replica's engine publishes its KV events, its supervisor keys them, the controller
hands the changes to the gateway, and the gateway tokenizes a chat request with the
model's chat template and finds the replica that holds its prefix. A wrong token anywhere
(another template, special tokens added twice) would make the keys differ and the second
request a `no-match`."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Served

# About 500 tokens: 3 whole blocks of vLLM's CPU block size (128).
SYSTEM = " ".join(
    f"Rule {n}: answer in plain words, cite the section, and keep to the facts given."
    for n in range(30)
)


def samples(c: httpx.Client, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = c.get("/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def per_label(c: httpx.Client, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples(c, name).items()}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def chat(c: httpx.Client, model: str, question: str) -> None:
    r = c.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
            "max_tokens": 1,
        },
    )
    assert r.status_code == 200, r.text


def test_a_shared_prefix_goes_back_to_the_replica_that_cached_it(served: Served) -> None:
    with served.client() as c:
        wait_for(
            lambda: sorted(per_label(c, "raylm_kv_index_synced", "replica").values()) == [1, 1],
            30,
            "both replicas' caches to be read",
        )
        wait_for(
            lambda: per_label(c, "raylm_kv_tokenizer_loaded", "model").get(served.model) == 1,
            60,
            "the model's tokenizer to load",
        )
        before = per_label(c, "raylm_replica_requests_total", "replica")
        chat(c, served.model, "What is rule 3?")
        after = per_label(c, "raylm_replica_requests_total", "replica")
        (first,) = [r for r in after if after[r] > before.get(r, 0)]
        # The engine stored the prompt's blocks; its events reach the gateway.
        wait_for(
            lambda: per_label(c, "raylm_kv_index_blocks", "replica").get(first, 0) >= 3,
            30,
            "the first request's blocks in the gateway's index",
        )
        decisions = per_label(c, "raylm_routing_decisions_total", "reason")
        hits = per_label(c, "raylm_engine_prefix_cache_hits_total", "replica").get(first, 0)
        chat(c, served.model, "And what is rule 7?")
        again = per_label(c, "raylm_replica_requests_total", "replica")
        assert again[first] == after[first] + 1, "the second request went elsewhere"
        now = per_label(c, "raylm_routing_decisions_total", "reason")
        assert now.get("prefix", 0) == decisions.get("prefix", 0) + 1, now
        predicted = per_label(c, "raylm_routing_predicted_cached_tokens_total", "replica")
        assert predicted[first] >= 3 * 128
        # What the engine itself found in its cache (scraped every 2 s).
        wait_for(
            lambda: (
                per_label(c, "raylm_engine_prefix_cache_hits_total", "replica").get(first, 0)
                >= hits + 3 * 128
            ),
            10,
            "the engine's prefix-cache hits",
        )
