"""SIGTERM drains and stops everything `raylm serve` started: no raylm, vLLM or Ray process
is left behind. Runs last: it ends the shared server."""

from __future__ import annotations

import signal
import time

import psutil

from tests.conftest import Served


def test_sigterm_leaves_nothing_behind(served: Served) -> None:
    tree = served.tree()
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "raylm.serve.launcher" in names and ("raylet" in names or "gcs_server" in names)
    served.proc.send_signal(signal.SIGTERM)
    code = served.proc.wait(timeout=180)
    assert code == 0, served.log()[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, [(p.pid, p.cmdline()[:4]) for p in alive]
    assert "stopping replicas" in served.log()
