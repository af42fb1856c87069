"""A deployment's life on one machine, on a serve of its own (two replicas), so that no test
here breaks the suite's shared server (tests/conftest.py `served`):

- a replica kept busy by long requests is never killed for a slow probe;
- one whose engine stops making progress is replaced (the rule: raylm.serve.health);
- one whose vLLM process dies is restarted while the other keeps answering;
- a key the spec file rate-limits is refused with 429, and the default key is not;
- `raylm ps` shows the replicas to the admin key only; `raylm scale` 2 -> 1 under load
  fails no request, and 1 -> 2 brings a ready replica back;
- `raylm update` under load (requests and streams) fails none and ends on the new
  version; one whose version cannot load stops, and the old version serves on;
- `raylm autoscale` drains the idle model down to its minimum, and a real client's load
  brings a second replica up again; /metrics and `raylm ps` show the decisions;
- SIGTERM drains and stops everything `raylm serve` started.

The replicas take one sequence at a time (`max-num-seqs = 1`) and probe fast, so a one-token
probe would queue behind the user's work and time out: exactly how a busy, healthy replica
used to be killed. Tests run in file order (pytest keeps it within a module).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.conftest import RAYLM, Served, running_serve

SPEC = """
admin_key = "sk-admin-lifecycle-6e02b1"
probe_interval_s = 2.0
probe_timeout_s = 4.0
probe_strikes = 2
progress_timeout_s = 10.0

[engine_args]
max-num-seqs = 1

[[keys]]
name = "batch-team"
key = "sk-batch-team-58c1d0e7a9"
requests_per_minute = 1
"""
LIMITED_KEY = "sk-batch-team-58c1d0e7a9"
ADMIN_KEY = "sk-admin-lifecycle-6e02b1"
# How long the old rule took to kill a replica whose probes queue: strikes x (interval+timeout).
PROBE_WINDOW_S = 2 * (2.0 + 4.0)


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    spec = tmp / "raylm.toml"
    spec.write_text(SPEC)
    with running_serve(tmp, "--replicas", "2", "--name", "lifecycle", "-f", str(spec)) as s:
        yield s


def _replicas(s: Served) -> list[dict[str, Any]]:
    with s.client(timeout=10) as c:
        return c.get("/").json()["replicas"]  # type: ignore[no-any-return]


def _restarts(s: Served) -> dict[str, int]:
    return {r["replica_id"]: r["restarts"] for r in _replicas(s)}


def _wait_all_ready(s: Served, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(r["state"] == "ready" for r in _replicas(s)):
        assert time.monotonic() < deadline, _replicas(s)
        time.sleep(2)


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


def test_a_busy_replica_is_not_killed_for_a_slow_probe(life: Served) -> None:
    assert set(_restarts(life).values()) == {0}
    seen: set[str] = set()
    started = time.monotonic()
    until = started + 3 * PROBE_WINDOW_S
    with cf.ThreadPoolExecutor(4) as pool:
        load = [pool.submit(_keep_busy, life, until) for _ in range(4)]
        while not all(f.done() for f in load):
            for rep in _replicas(life):
                seen.add(f"{rep['state']}: {rep['detail']}")
                assert rep["restarts"] == 0 and rep["state"] == "ready", rep
            time.sleep(1)
        statuses = [code for f in load for code in f.result()]
    busy_for = time.monotonic() - started
    assert statuses and set(statuses) == {200}, statuses
    assert busy_for >= 3 * PROBE_WINDOW_S, f"the load lasted only {busy_for:.0f} s"
    assert any("busy" in x for x in seen), seen
    assert set(_restarts(life).values()) == {0}


def _engine_core(launcher: psutil.Process) -> psutil.Process:
    # vLLM forks the one-process engine and renames it "VLLM::EngineCore" with setproctitle;
    # CI once caught it still under the launcher's own command line, so a forked copy counts.
    children = launcher.children(recursive=True)
    cores = [
        p for p in children if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
    ] or [p for p in children if p.cmdline() == launcher.cmdline()]
    assert cores, [p.cmdline() for p in children]
    return cores[0]


def test_an_engine_that_stops_making_progress_is_replaced(life: Served) -> None:
    before = _restarts(life)
    launchers = life.engine_pids()
    assert len(launchers) == 2, launchers
    core = _engine_core(launchers[0])
    # Only the engine stops: vLLM's API server (and its /health) keeps answering.
    os.kill(core.pid, signal.SIGSTOP)
    # Two at once: the gateway sends one to each replica, so one is stuck in the hung engine.
    pool = cf.ThreadPoolExecutor(2)
    stuck = [pool.submit(_long_request, life, i, 8) for i in range(2)]
    details: list[str] = []
    try:
        deadline = time.monotonic() + 10 + 60
        while _restarts(life) == before:
            details += [r["detail"] for r in _replicas(life)]
            assert time.monotonic() < deadline, _replicas(life)
            time.sleep(1)
        assert not psutil.pid_exists(core.pid) or core.status() == psutil.STATUS_ZOMBIE
    finally:
        if psutil.pid_exists(core.pid):
            os.kill(core.pid, signal.SIGCONT)
    after = _restarts(life)
    assert sorted(after[r] - before[r] for r in before) == [0, 1], (before, after)
    # It was judged by the rule: strikes with the reason, not an exit or a lost node.
    assert any(d.startswith("health strike") for d in details), details
    # A request that was stuck in the hung engine got an answer, not silence.
    assert {f.result(timeout=120) for f in stuck} <= {200, 502, 503, 504}
    pool.shutdown()
    _wait_all_ready(life, 600)
    with life.client(timeout=120) as c:
        assert c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_a_killed_replica_comes_back_while_the_other_answers(life: Served) -> None:
    before = _restarts(life)
    engines = life.engine_pids()
    assert len(engines) == 2
    os.kill(engines[0].pid, signal.SIGKILL)
    # Seen as not ready within seconds, while the other replica keeps serving.
    deadline = time.monotonic() + 30
    while [r["state"] for r in _replicas(life)].count("ready") != 1:
        assert time.monotonic() < deadline, f"the dead replica was not noticed: {_replicas(life)}"
        time.sleep(0.5)
    with life.client(timeout=60) as c:
        for _ in range(3):
            r = c.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
            assert r.status_code == 200, r.text
        assert c.get("/health").status_code == 200  # the model still has a ready replica
    deadline = time.monotonic() + 600
    while True:
        after = _restarts(life)
        restarted = sorted(after[r] - before[r] for r in before) == [0, 1]
        if restarted and all(r["state"] == "ready" for r in _replicas(life)):
            break
        assert time.monotonic() < deadline, f"the replica did not come back: {_replicas(life)}"
        time.sleep(2)
    with life.client(timeout=10) as c:
        assert "raylm_replica_restarts_total" in c.get("/metrics").text
    assert len(life.engine_pids()) == 2


def test_a_key_the_spec_file_limits_gets_429_and_the_default_key_does_not(life: Served) -> None:
    body = {"prompt": "Hi", "max_tokens": 1}
    limited = {"Authorization": f"Bearer {LIMITED_KEY}"}
    with life.client(timeout=120) as c:
        statuses = [c.post("/v1/completions", json=body, headers=limited) for _ in range(2)]
        assert [r.status_code for r in statuses] == [200, 429]
        error = statuses[1].json()["error"]
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert int(statuses[1].headers["retry-after"]) >= 1
        # The key of `--api-key` / RAYLM_API_KEY ('default') has no limit.
        assert all(c.post("/v1/completions", json=body).status_code == 200 for _ in range(3))
    assert LIMITED_KEY not in life.log() and life.api_key not in life.log()


def _raylm(life: Served, *args: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    cmd = [RAYLM, *args, "--endpoint", life.base_url, "--admin-key", key]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_ps_shows_every_replica_to_the_admin_key_only(life: Served) -> None:
    r = _raylm(life, "ps")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct-0" in r.stdout and "smollm2-135m-instruct-1" in r.stdout
    assert "smollm2-135m-instruct: 2/2 ready, version 1, TP=1 PP=1" in r.stdout
    for wrong in ("sk-wrong-key", life.api_key):  # an API key is not an admin key
        r = _raylm(life, "ps", key=wrong)
        assert r.returncode == 1 and "(401)" in r.stderr and "Traceback" not in r.stderr


def test_scale_down_under_load_fails_nothing_and_scale_up_comes_back(life: Served) -> None:
    model = "smollm2-135m-instruct"
    done = threading.Event()
    with cf.ThreadPoolExecutor(2) as pool:
        load = [pool.submit(_keep_busy_until, life, done) for _ in range(2)]
        time.sleep(3)
        down = _raylm(life, "scale", model, "1")
        time.sleep(3)  # the load goes on against the one replica left
        done.set()
        statuses = [s for f in load for s in f.result()]
    assert down.returncode == 0, down.stderr
    assert "draining smollm2-135m-instruct-1" in down.stderr
    assert f"{model}: 1 replica(s) ready" in down.stdout
    assert statuses and all(s == 200 for s in statuses), statuses
    assert [r["replica_id"] for r in _replicas(life)] == [f"{model}-0"]
    up = _raylm(life, "scale", model, "2")
    assert up.returncode == 0, up.stderr
    # A new id: gateways key what they know of a replica's cache by its id.
    assert f"starting {model}-2" in up.stderr and f"{model}: 2 replica(s) ready" in up.stdout
    refused = _raylm(life, "scale", "no-such-model", "2")
    assert refused.returncode == 1 and "No model `no-such-model`" in refused.stderr


def _stream_until(s: Served, done: threading.Event) -> list[str]:
    """Streams back to back until `done`: each one's ending ('[DONE]', or what broke it)."""
    endings = []
    body = {"prompt": "Count:", "max_tokens": 16, "stream": True, "ignore_eos": True}
    with s.client(timeout=600) as c:
        while not done.is_set():
            with c.stream("POST", "/v1/completions", json=body) as r:
                text = "".join(r.iter_text()) if r.status_code == 200 else f"status {r.status_code}"
            tail = text.strip().splitlines()[-1] if text.strip() else "empty"
            errors = [line for line in text.splitlines() if '"error"' in line]
            endings.append(errors[0] if errors else "[DONE]" if tail == "data: [DONE]" else tail)
    return endings


def _warnings(s: Served) -> list[str]:
    """The serve log's warnings and errors: what a failed assertion shows beside its data."""
    return [line for line in s.log().splitlines() if "WARNING" in line or "ERROR" in line]


def test_a_rolling_update_under_load_fails_nothing_and_ends_on_the_new_version(
    life: Served,
) -> None:
    model = "smollm2-135m-instruct"
    done = threading.Event()
    with cf.ThreadPoolExecutor(3) as pool:
        load = [pool.submit(_keep_busy_until, life, done) for _ in range(2)]
        streams = pool.submit(_stream_until, life, done)
        time.sleep(2)
        rolled = _raylm(life, "update", model, "--engine-arg", "max-num-seqs=2")
        done.set()
        statuses = [s for f in load for s in f.result()]
        endings = streams.result()
    assert rolled.returncode == 0, rolled.stderr
    assert f"{model}: version 2, 2 replica(s) ready" in rolled.stdout
    assert statuses and all(s == 200 for s in statuses), statuses
    broken = [e for e in endings if e != "[DONE]"]
    assert endings and not broken, (broken, _warnings(life))
    view = json.loads(_raylm(life, "ps", "--json").stdout)["models"][0]
    assert view["version"] == 2 and set(view["versions"].values()) == {2}
    assert view["rollout"] == "updated to version 2"


def test_a_rollout_whose_version_cannot_load_stops_and_the_old_one_serves(life: Served) -> None:
    model = "smollm2-135m-instruct"
    bad = _raylm(life, "update", model, "--engine-arg", "max-num-seqs=not-a-number")
    assert bad.returncode == 1
    assert f"The update of {model} stopped" in bad.stderr
    assert "failed to start 3 times" in bad.stderr and "Traceback" not in bad.stderr
    # Version 2 goes on: the replica drained to make room comes back at once.
    with life.client(timeout=120) as c:
        assert c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
    deadline = time.monotonic() + 300
    while True:
        view = json.loads(_raylm(life, "ps", "--json").stdout)["models"][0]
        states = [r["state"] for r in view["replicas"]]
        if states == ["ready", "ready"] or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert states == ["ready", "ready"], view
    assert view["version"] == 2 and set(view["versions"].values()) == {2}
    assert view["rollout"].startswith("failed: version 3 stopped")


def _keep_busy_until(s: Served, done: threading.Event) -> list[int]:
    """Requests back to back, a real client's steady load, until `done`."""
    statuses = []
    i = 0
    while not done.is_set():
        statuses.append(_long_request(s, i, max_tokens=16))
        i += 1
    return statuses


def _model_view(life: Served) -> dict[str, Any]:
    r = _raylm(life, "ps", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["models"][0]  # type: ignore[no-any-return]


def _wait_desired(life: Served, replicas: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = _model_view(life)
        states = [r["state"] for r in view["replicas"]]
        if view["desired"] == replicas and states == ["ready"] * replicas:
            return view
        assert time.monotonic() < deadline, view
        time.sleep(1)


def test_autoscaling_drains_an_idle_model_to_its_minimum_and_load_brings_a_replica_back(
    life: Served,
) -> None:
    model = "smollm2-135m-instruct"
    bounds = ("--min", "1", "--max", "2", "--target", "1")
    delays = ("--upscale-delay", "3", "--downscale-delay", "5")
    on = _raylm(life, "autoscale", model, *bounds, *delays)
    assert on.returncode == 0, on.stderr
    assert f"{model}: autoscaling 1-2 replicas at 1 in flight each (2 replica(s))" in on.stdout
    # By hand, only within the bounds.
    refused = _raylm(life, "scale", model, "3")
    assert refused.returncode == 1 and "autoscales between 1 and 2 replicas" in refused.stderr
    # Idle: after the downscale delay one replica is drained and stopped.
    view = _wait_desired(life, 1, 120)
    assert view["autoscale"]["downs"] == 1
    assert view["autoscale"]["last"].startswith("scaled 2 -> 1: load 0.0 over 2 replica(s)")
    # Three clients back to back want ceil(3 / 1) = 2, the maximum.
    done = threading.Event()
    with cf.ThreadPoolExecutor(3) as pool:
        load = [pool.submit(_keep_busy_until, life, done) for _ in range(3)]
        try:
            view = _wait_desired(life, 2, 600)
        finally:
            done.set()
        statuses = [s for f in load for s in f.result()]
    assert statuses and all(s == 200 for s in statuses), statuses
    assert view["autoscale"]["ups"] == 1 and view["autoscale"]["last"].startswith("scaled 1 -> 2")
    text = _raylm(life, "ps").stdout
    assert "autoscaling 1-2 replicas at 1 in flight each" in text and "1 up, 1 down" in text
    with life.client(timeout=10) as c:
        metrics = c.get("/metrics").text
    assert f'raylm_autoscale_decisions_total{{direction="up",model="{model}"}} 1.0' in metrics
    assert f'raylm_autoscale_desired_replicas{{model="{model}"}} 2.0' in metrics
    off = _raylm(life, "autoscale", model, "--off")
    assert off.returncode == 0 and f"{model}: autoscaling off (2 replica(s))" in off.stdout
    assert _model_view(life)["autoscale"] is None


def test_sigterm_leaves_nothing_behind(life: Served) -> None:
    tree = life.tree()
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "raylm.serve.launcher" in names and ("raylet" in names or "gcs_server" in names)
    life.proc.send_signal(signal.SIGTERM)
    code = life.proc.wait(timeout=180)
    assert code == 0, life.log()[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, [(p.pid, p.cmdline()[:4]) for p in alive]
    assert "stopping replicas" in life.log()
