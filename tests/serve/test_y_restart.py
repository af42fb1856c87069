"""A replica whose vLLM process dies is reported, restarted, and served again; the other
replica keeps answering meanwhile."""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import Served


def _replicas(served: Served) -> list[dict[str, object]]:
    with served.client(timeout=10) as c:
        return c.get("/").json()["replicas"]  # type: ignore[no-any-return]


def test_killed_replica_comes_back(served: Served) -> None:
    engines = served.engine_pids()
    assert len(engines) == 2
    before = {r["replica_id"]: r["restarts"] for r in _replicas(served)}
    os.kill(engines[0].pid, signal.SIGKILL)

    # Seen as not ready within seconds, while the other replica keeps serving.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [r["state"] for r in _replicas(served)]
        if states.count("ready") == 1:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the dead replica was not noticed: {_replicas(served)}")
    with served.client(timeout=60) as c:
        for _ in range(3):
            r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 200, r.text
        assert c.get("/health").status_code == 200  # the model still has a ready replica

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        rows = _replicas(served)
        restarted = [r for r in rows if r["restarts"] == before[r["replica_id"]] + 1]  # type: ignore[operator]
        if len(restarted) == 1 and all(r["state"] == "ready" for r in rows):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"the replica did not come back: {_replicas(served)}")
    with served.client(timeout=10) as c:
        assert "raylm_replica_restarts_total" in c.get("/metrics").text
    assert len(served.engine_pids()) == 2
