"""Machines that lost their processes (a reboot, `kill -9`) come back with the commands the
user already has: `raylm up` on the head, then the join line it printed before."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylm.testing.machine import printed_join_line
from raylm.testing.netns import NetnsCluster
from raylm.testing.pytest_netns import require_netns

pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    require_netns()
    c = NetnsCluster(2, subnet="10.77.6", workdir=tmp_path_factory.mktemp("rejoin"))
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_same_join_line_on_a_live_worker_changes_nothing(pair: NetnsCluster) -> None:
    before = set(pair.ns_pids(1))
    p = pair.join_cmd(1)
    assert p.returncode == 0, p.stderr
    assert "already part of" in " ".join(p.stderr.split())
    assert set(pair.ns_pids(1)) >= before


def test_head_and_worker_come_back_after_losing_every_process(pair: NetnsCluster) -> None:
    c = pair
    old_line = list(c.join_line)
    for i in (1, 0):
        c.kill_node(i)
    status = c.raylm(0, "status")
    err = " ".join(status.stderr.split())
    assert status.returncode == 1 and "stale" in err and "Run: raylm up" in err, err
    assert "Traceback" not in err
    up = c.raylm(0, "up")
    assert up.returncode == 0, up.stderr
    notes = " ".join(up.stderr.split())
    assert "stale record" in notes and "kept the cluster token" in notes, notes
    # The join line printed before is still the right one: same address, same token.
    assert printed_join_line(up.stdout) == old_line
    worker = c.raylm(1, "status")
    assert worker.returncode == 1 and f"raylm join {c.address}" in " ".join(worker.stderr.split())
    back = c.run(1, ["bash", "-c", shlex.join(old_line)])
    assert back.returncode == 0, back.stderr
    assert "stale record" in " ".join(back.stderr.split())
    assert c.wait_alive(2) == sorted(n.ip for n in c.nodes)
    state = (c.nodes[1].raylm_home / "cluster" / "state.json").read_text()
    assert c.token not in state


def test_join_after_a_reboot_needs_no_token_again(pair: NetnsCluster, tmp_path: Path) -> None:
    """The token is kept on the machine: `raylm join HEAD` alone is enough after a crash."""
    c = pair
    c.kill_node(1)
    p = c.raylm(1, "join", c.address)
    assert p.returncode == 0, p.stderr
    assert c.wait_alive(2) == sorted(n.ip for n in c.nodes)
