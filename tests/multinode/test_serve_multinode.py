"""Multi-node serving on real Ray nodes (network namespaces): a TP=3 replica spanning three
nodes, served through a hung rank on another node: found by the health rule, the whole
replica (every rank, on every node) torn down and replaced.

Elsewhere: a rank whose process dies is found the same way a one-node replica's is
(tests/serve/test_lifecycle.py); two replicas on two machines under load while one machine
dies and another drops off the network (tests/readme/test_multinode_recipe.py).

`raylm serve` runs on the head (node 0) as a user would run it there, with the gateway on
the head's address so this process can reach it over the bridge. Each node has its own
model store; the model reaches the workers through `raylm model sync`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from raylm.models.store import ModelStore
from raylm.testing.machine import raylm_argv
from raylm.testing.netns import NetnsCluster
from raylm.testing.process import stop_serve
from tests.conftest import DEMO_MODEL, raylm_home

pytestmark = pytest.mark.multinode

# Short probes so hangs are found in seconds, not minutes.
FAST_PROBES = """
probe_interval_s = 2.0
probe_timeout_s = 8.0
probe_strikes = 2
progress_timeout_s = 10.0
"""


@dataclass
class Deployment:
    cluster: NetnsCluster
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def root(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/", timeout=10).json()  # type: ignore[no-any-return]

    def replicas(self) -> list[dict[str, Any]]:
        return self.root()["replicas"]  # type: ignore[no-any-return]

    def wait(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if pred(self.replicas()):
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise AssertionError(f"{what} within {timeout:.0f} s; replicas: {self.replicas()}")

    def stop(self) -> None:
        stop_serve(self.proc)
        self.cluster.nodes[0].pids.discard(self.proc.pid)


def _engines(ips: list[str] | str) -> list[psutil.Process]:
    """vLLM launcher processes (any rank) of the nodes with these IPs."""
    wanted = {ips} if isinstance(ips, str) else set(ips)
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "raylm.serve.launcher" in (p.info["cmdline"] or []) and (
                p.environ().get("VLLM_HOST_IP") in wanted
            ):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _all_ips(c: NetnsCluster) -> list[str]:
    return [n.ip for n in c.nodes]


@pytest.fixture(scope="module")
def cluster(netns_cluster: NetnsCluster) -> NetnsCluster:
    """The session cluster with the demo model synced from the head to every worker."""
    c = netns_cluster
    src = ModelStore(raylm_home() / "models")
    src.resolve(None)  # converted once, cached in the user's store
    head = ModelStore(c.nodes[0].raylm_home / "models")
    if head.get(DEMO_MODEL) is None or not head.verify(DEMO_MODEL).ok:
        head.copy_from(src, DEMO_MODEL)
    p = c.raylm(0, "model", "sync", DEMO_MODEL, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    return c


def _serve(c: NetnsCluster, tmp: Path, name: str, *args: str, spec: str = "") -> Deployment:
    port = 8000 + len(name)
    spec_file = tmp / f"{name}.toml"
    spec_file.write_text(spec)
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = c.popen(
            0,
            raylm_argv(
                "serve",
                "--name",
                name,
                "--host",
                c.head_ip,
                "--port",
                str(port),
                "-f",
                str(spec_file),
                *args,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    d = Deployment(c, proc, f"http://{c.head_ip}:{port}", log_path)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if proc.poll() is not None:
            pytest.fail(f"raylm serve exited {proc.returncode}:\n{text[-4000:]}")
        if "raylm is ready" in text:
            return d
        time.sleep(1)
    d.stop()
    pytest.fail(f"not ready in time:\n{log_path.read_text()[-4000:]}")


def test_serve_refuses_nodes_without_a_verified_copy(cluster: NetnsCluster) -> None:
    """A worker whose copy is missing is named, with the command that fixes it, and
    nothing is started (TP=3 needs all three nodes)."""
    worker = ModelStore(cluster.nodes[2].raylm_home / "models")
    manifest = worker.read_manifest(DEMO_MODEL)
    assert manifest is not None
    victim = worker.model_dir(DEMO_MODEL) / "config.json"
    saved = victim.read_bytes()
    victim.unlink()
    try:
        p = cluster.raylm(0, "serve", "--tp", "3", "--name", "refused", timeout=300)
        assert p.returncode == 1, p.stdout + p.stderr
        assert cluster.nodes[2].ip in p.stderr, p.stderr
        assert f"raylm model sync {DEMO_MODEL}" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        assert not _engines(_all_ips(cluster))
    finally:
        victim.write_bytes(saved)
    p = cluster.raylm(0, "model", "sync", DEMO_MODEL, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture(scope="module")
def tp3(cluster: NetnsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = _serve(cluster, tmp_path_factory.mktemp("tp3"), "tp3", "--tp", "3", spec=FAST_PROBES)
    try:
        yield d
    finally:
        d.stop()


def test_tp3_replica_spans_three_nodes_and_answers(tp3: Deployment) -> None:
    (rep,) = tp3.replicas()
    assert sorted(rep["nodes"]) == sorted(n.ip for n in tp3.cluster.nodes), rep
    assert (
        "TP=3" in tp3.log_path.read_text() and "3 node(s) per replica" in tp3.log_path.read_text()
    )
    client = openai.OpenAI(base_url=f"{tp3.base_url}/v1", api_key="unused", timeout=120)
    q = [{"role": "user", "content": "What is the capital of France?"}]
    out = client.chat.completions.create(model=DEMO_MODEL, messages=q, temperature=0, max_tokens=20)  # type: ignore[arg-type]
    assert "Paris" in (out.choices[0].message.content or "")
    stream = client.chat.completions.create(
        model=DEMO_MODEL,
        messages=q,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=20,
        stream=True,
    )
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_a_hung_remote_rank_is_found_and_the_whole_replica_replaced(tp3: Deployment) -> None:
    (rep,) = tp3.replicas()
    before = rep["restarts"]
    engines = _engines(_all_ips(tp3.cluster))
    remote = [p for p in engines if "--headless" in p.cmdline()]
    head_engine = [p for p in engines if "--headless" not in p.cmdline()]
    assert (len(remote), len(head_engine)) == (2, 1), [p.cmdline()[-8:] for p in engines]
    # Alive but silent: rank 0 and its API server still answer /health; only the probe's
    # generation, stuck in the collective that waits for this rank, shows the hang.
    os.killpg(remote[-1].pid, signal.SIGSTOP)
    try:
        tp3.wait(lambda rs: rs[0]["restarts"] > before, 180, "the hung replica was not torn down")
        # Torn down on its machine too: the stopped process group is gone, not left frozen.
        deadline = time.monotonic() + 60
        while psutil.pid_exists(remote[-1].pid) and time.monotonic() < deadline:
            if remote[-1].status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(1)
        assert not psutil.pid_exists(remote[-1].pid) or (
            remote[-1].status() == psutil.STATUS_ZOMBIE
        )
        # Torn down whole: rank 0's engine on the head goes too, not only the bad rank.
        head_engine[0].wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(remote[-1].pid, signal.SIGCONT)
    tp3.wait(
        lambda rs: rs[0]["state"] == "ready" and rs[0]["restarts"] == before + 1,
        900,
        "the hung replica was not replaced",
    )
    r = httpx.post(
        f"{tp3.base_url}/generate",
        json={"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200 and "Paris" in r.json()["text"], r.text


def test_tp3_stop_leaves_no_engine(tp3: Deployment) -> None:
    tp3.stop()
    assert tp3.proc.returncode == 0, tp3.log_path.read_text()[-3000:]
    deadline = time.monotonic() + 30
    ips = _all_ips(tp3.cluster)
    while _engines(ips) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _engines(ips), [p.cmdline()[-6:] for p in _engines(ips)]
