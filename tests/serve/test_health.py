"""A replica kept busy by long requests is never killed for a slow probe; one whose engine
stops making progress is replaced. (The rule: raylm.serve.health.)

The deployment takes one sequence at a time (`max-num-seqs = 1`) and probes fast, so a
one-token probe would queue behind the user's work and time out: exactly how a busy,
healthy replica used to be killed.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from raylm.testing.netns import machine_base_env
from tests.conftest import Served, free_port, raylm_home, start_serve, stop_tree, wait_ready

SPEC = """
probe_interval_s = 2.0
probe_timeout_s = 4.0
probe_strikes = 2
progress_timeout_s = 10.0

[engine_args]
max-num-seqs = 1
"""
# How long the old rule took to kill a replica whose probes queue: strikes x (interval+timeout).
PROBE_WINDOW_S = 2 * (2.0 + 4.0)


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("health")
    spec = tmp / "raylm.toml"
    spec.write_text(SPEC)
    port, key = free_port(), secrets.token_hex(16)
    env = {**machine_base_env(), "RAYLM_API_KEY": key, "RAYLM_HOME": str(raylm_home())}
    log_path = tmp / "serve.log"
    proc = start_serve(["--port", str(port), "--name", "health", "-f", str(spec)], log_path, env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base_url, log_path, timeout=900)
        yield Served(
            proc=proc, base_url=base_url, api_key=key, log_path=log_path, home=raylm_home()
        )
    finally:
        stop_tree(proc)


def _replica(s: Served) -> dict[str, Any]:
    with s.client(timeout=10) as c:
        (rep,) = c.get("/").json()["replicas"]
    return rep  # type: ignore[no-any-return]


def _long_request(s: Served, i: int, max_tokens: int = 400) -> int:
    body = {"prompt": f"Story {i}:", "max_tokens": max_tokens, "ignore_eos": True}
    with s.client(timeout=600) as c:
        return c.post("/v1/completions", json=body).status_code


def _keep_busy(s: Served, until: float) -> list[int]:
    """Requests back to back until `until`: the engine always has work queued."""
    statuses = []
    i = 0
    while time.monotonic() < until:
        statuses.append(_long_request(s, i, max_tokens=48))
        i += 1
    return statuses


def test_a_busy_replica_is_not_killed_for_a_slow_probe(one_at_a_time: Served) -> None:
    s = one_at_a_time
    assert _replica(s)["restarts"] == 0
    seen: set[str] = set()
    started = time.monotonic()
    until = started + 3 * PROBE_WINDOW_S
    with cf.ThreadPoolExecutor(3) as pool:
        load = [pool.submit(_keep_busy, s, until) for _ in range(3)]
        while not all(f.done() for f in load):
            rep = _replica(s)
            seen.add(f"{rep['state']}: {rep['detail']}")
            assert rep["restarts"] == 0 and rep["state"] == "ready", rep
            time.sleep(1)
        statuses = [code for f in load for code in f.result()]
    busy_for = time.monotonic() - started
    assert statuses and set(statuses) == {200}, statuses
    assert busy_for >= 3 * PROBE_WINDOW_S, f"the load lasted only {busy_for:.0f} s"
    assert any("busy" in x for x in seen), seen
    assert _replica(s)["restarts"] == 0


def _engine_core(s: Served) -> psutil.Process:
    launchers = s.engine_pids()
    assert len(launchers) == 1, launchers
    cores = [
        p
        for p in launchers[0].children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
    ]
    assert cores, [p.name() for p in launchers[0].children(recursive=True)]
    return cores[0]


def test_an_engine_that_stops_making_progress_is_replaced(one_at_a_time: Served) -> None:
    s = one_at_a_time
    core = _engine_core(s)
    # Only the engine stops: vLLM's API server (and its /health) keeps answering.
    os.kill(core.pid, signal.SIGSTOP)
    stuck = cf.ThreadPoolExecutor(1).submit(_long_request, s, 99)
    details: list[str] = []
    try:
        deadline = time.monotonic() + 10 + 60
        while (rep := _replica(s))["restarts"] == 0:
            details.append(rep["detail"])
            assert time.monotonic() < deadline, rep
            time.sleep(1)
        assert not psutil.pid_exists(core.pid) or core.status() == psutil.STATUS_ZOMBIE
    finally:
        if psutil.pid_exists(core.pid):
            os.kill(core.pid, signal.SIGCONT)
    rep = _replica(s)
    assert rep["restarts"] == 1, rep
    # It was judged by the rule: strikes with the reason, not an exit or a lost node.
    assert any(d.startswith("health strike") for d in details), details
    # The request that was stuck in the hung engine got an answer, not silence.
    assert stuck.result(timeout=120) in (200, 502, 503, 504)
    deadline = time.monotonic() + 600
    while _replica(s)["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(2)
    with s.client(timeout=120) as c:
        assert c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
