"""The gateway's wait queue per model (`max_in_flight_per_replica`): an interactive key's
requests are let through before a batch key's, the queue is bounded, and so is the wait,
both refused with 503 and Retry-After."""

from __future__ import annotations

import concurrent.futures as cf
import re
import time
from collections.abc import Iterator

import pytest
from gateway_harness import MODEL, RunningGateway, replica, wait_for
from pydantic import SecretStr

from raylm.gateway.keys import ClientKey
from raylm.gateway.limits import GatewayLimits

CHAT_KEY = "sk-chat-team-0c9e41"
JOBS_KEY = "sk-jobs-team-7b2d88"
KEYS = [
    ClientKey(name="chat", key=SecretStr(CHAT_KEY)),
    ClientKey(name="jobs", key=SecretStr(JOBS_KEY), priority="batch"),
]


def _complete(gw: RunningGateway, key: str, max_tokens: int) -> tuple[int, float, str]:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens}
    with gw.client(headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        r = c.post("/v1/completions", json={**body, "ignore_eos": True})
    return r.status_code, time.monotonic(), r.text


def _gauge(gw: RunningGateway, name: str) -> float:
    with gw.client(headers={"Authorization": f"Bearer {CHAT_KEY}"}) as c:
        text = c.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _waiting(gw: RunningGateway, priority: str) -> float:
    return _gauge(gw, f'raylm_queue_waiting{{model="{MODEL}",priority="{priority}"}}')


@pytest.fixture(scope="module")
def queued(replica_url: str) -> Iterator[RunningGateway]:
    # A wait far longer than the blocker's answer, even on a busy CI machine (it took over
    # 30 s there): what waits here is let through, never timed out.
    limits = GatewayLimits(max_in_flight_per_replica=1, max_queued_per_model=3, queue_timeout_s=600)
    with RunningGateway([replica(replica_url)], api_keys=KEYS, limits=limits) as g:
        yield g


def test_interactive_requests_overtake_queued_batch_ones_and_the_queue_is_bounded(
    queued: RunningGateway,
) -> None:
    with cf.ThreadPoolExecutor(6) as pool:
        blocker = pool.submit(_complete, queued, JOBS_KEY, 300)
        wait_for(lambda: _gauge(queued, "raylm_requests_in_flight") == 1, 60)
        batch = [pool.submit(_complete, queued, JOBS_KEY, 4)]
        wait_for(lambda: _waiting(queued, "batch") == 1, 30)
        batch.append(pool.submit(_complete, queued, JOBS_KEY, 4))
        wait_for(lambda: _waiting(queued, "batch") == 2, 30)
        chat = [pool.submit(_complete, queued, CHAT_KEY, 4)]
        wait_for(lambda: _waiting(queued, "interactive") == 1, 30)
        # Three waiting: the queue's limit. A batch request more is refused at once...
        status, _, text = _complete(queued, JOBS_KEY, 4)
        assert status == 503 and '"queue_full"' in text
        # ...and an interactive one takes the place of the newest batch request.
        chat.append(pool.submit(_complete, queued, CHAT_KEY, 4))
        wait_for(lambda: _waiting(queued, "interactive") == 2, 30)
        assert not blocker.done(), "the blocker ended before the queue was checked"
        results = [f.result() for f in (blocker, *chat, *batch)]
    codes = [r[0] for r in results]
    assert codes == [200, 200, 200, 200, 503], results
    assert '"queue_full"' in results[4][2]
    chats_done, batch_done = max(r[1] for r in results[1:3]), results[3][1]
    assert chats_done < batch_done, "an interactive request waited behind a batch one"
    # Every slot came back: nothing waits, and a new request goes straight through.
    assert _waiting(queued, "batch") == 0 and _waiting(queued, "interactive") == 0
    assert _complete(queued, JOBS_KEY, 2)[0] == 200
    refused = f'raylm_queue_refused_total{{model="{MODEL}",reason="queue_full"}}'
    assert _gauge(queued, refused) == 2


def test_a_request_waits_at_most_queue_timeout_s(replica_url: str) -> None:
    limits = GatewayLimits(max_in_flight_per_replica=1, queue_timeout_s=1.0)
    gateway = RunningGateway([replica(replica_url)], api_keys=KEYS, limits=limits)
    with gateway as gw, cf.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(_complete, gw, JOBS_KEY, 300)
        wait_for(lambda: _gauge(gw, "raylm_requests_in_flight") == 1, 60)
        started = time.monotonic()
        with gw.client(headers={"Authorization": f"Bearer {CHAT_KEY}"}) as c:
            r = c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        waited = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "queue_timeout"
        assert int(r.headers["retry-after"]) >= 1
        assert 0.9 < waited < 30
        assert not blocker.done(), "the blocker ended before the wait ran out"
        assert blocker.result()[0] == 200
