"""The netns harness itself: nodes, addresses, faults, and a clean teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from raylm.testing.netns import NetnsCluster
from raylm.testing.pytest_netns import require_netns

pytestmark = pytest.mark.multinode

PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('open')\n"
    "except OSError as e:\n"
    "    print('closed', e)\n"
)


def _probe(c: NetnsCluster, i: int, host: str, port: int) -> str:
    return c.run(i, [sys.executable, "-c", PROBE, host, str(port)], timeout=30).stdout.strip()


# What raylm must work out itself; a machine of the harness must not be handed any of it.
RAYLM_OWN = (
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAYLM_CLUSTER_TOKEN",
    "RAYLM_HOME",
    "VLLM_HOST_IP",
    "RAY_NODE_IP_ADDRESS",
    "GLOO_SOCKET_IFNAME",
    "NCCL_SOCKET_IFNAME",
)


def test_machines_get_only_their_network_home_and_tmpdir(
    netns_cluster: NetnsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = netns_cluster
    # Even a test runner that exported them does not pass them on.
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    monkeypatch.setenv("RAYLM_CLUSTER_TOKEN", "leak")
    for n in c.nodes:
        env = dict(
            line.split("=", 1)
            for line in c.run(n.index, ["env"]).stdout.splitlines()
            if "=" in line
        )
        assert not set(RAYLM_OWN) & set(env), sorted(set(RAYLM_OWN) & set(env))
        assert env["HOME"] == str(n.home) and env["TMPDIR"] == str(n.tmp)
        ips = c.run(n.index, ["ip", "-4", "-o", "addr"]).stdout
        assert f"{n.ip}/24" in ips and "10.77" not in ips.replace(n.ip, "")


def test_three_nodes_alive_with_token_auth(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    assert c.wait_alive(3) == sorted(n.ip for n in c.nodes)
    token_file = c.nodes[0].raylm_home / "cluster" / "token"
    assert c.token and token_file.stat().st_mode & 0o777 == 0o600
    # The join line was the one `raylm up` printed, token included.
    assert c.join_line == ["raylm", "join", c.address, "--token", c.token]
    # Each node's Ray processes carry that node's raylm home: `raylm up`/`join` set it.
    for n in c.nodes:
        pids = c.ns_pids(n.index)
        assert pids, f"{n.name} runs nothing"
        homes = set()
        for pid in pids:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            homes |= {e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RAYLM_HOME=")}
        assert homes == {str(n.raylm_home)}


def test_block_port_and_unblock(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    head = c.head_ip
    assert _probe(c, 1, head, 6379) == "open"
    c.block_port(0, 6379)
    try:
        assert _probe(c, 1, head, 6379).startswith("closed")
        # Inside the node the port still answers: only the network path is cut.
        assert _probe(c, 0, "127.0.0.1", 6379) == "open"
    finally:
        c.unblock_port(0, 6379)
    assert _probe(c, 1, head, 6379) == "open"


def test_root_namespace_reaches_nodes(netns_cluster: NetnsCluster) -> None:
    with socket.create_connection((netns_cluster.head_ip, 6379), timeout=3):
        pass


def test_cut_and_restore_node(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    c.cut_node(2)
    try:
        assert _probe(c, 0, c.nodes[2].ip, 8077).startswith("closed")
    finally:
        c.restore_node(2)
    assert _probe(c, 0, c.nodes[2].ip, 8077) == "open"


def test_close_is_idempotent_and_leaves_nothing(tmp_path: Path) -> None:
    require_netns()
    c = NetnsCluster(2, subnet="10.77.9", workdir=tmp_path)
    c.build()
    p = c.popen(1, ["sleep", "300"])
    assert c.ns_pids(1) == [p.pid] or p.pid in c.ns_pids(1)
    c.kill_node(1)
    assert p.wait(5) is not None
    c.popen(0, ["sleep", "300"])
    c.close()
    c.close()
    assert c.leftovers() == []


def _dead_pid() -> int:
    """A pid number (mod 100000, as cluster names keep it) that no running process has."""
    used = {int(e) % 100000 for e in os.listdir("/proc") if e.isdigit()}
    return next(p for p in range(99999, 1000, -1) if p not in used)


def test_leftovers_of_a_killed_suite_do_not_block_the_next(tmp_path: Path) -> None:
    # What a SIGKILLed suite leaves: a bridge holding the subnet, a namespace with a
    # process in it and a /tmp root, all named after a pid that no longer runs.
    require_netns()
    stale = f"rl{_dead_pid()}x0"
    subprocess.run(["ip", "link", "add", f"{stale}br", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "10.77.9.254/24", "dev", f"{stale}br"], check=True)
    subprocess.run(["ip", "netns", "add", f"{stale}n0"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", f"{stale}n0", "sleep", "300"])
    root = Path(tempfile.mkdtemp(prefix=f"{stale}n0-", dir="/tmp"))
    c = NetnsCluster(1, subnet="10.77.9", workdir=tmp_path)
    try:
        c.build()  # would fail "subnet 10.77.9.0/24 is already used" without the cleanup
        assert sleeper.wait(10) is not None
        names = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert f"{stale}br" not in names
        assert (
            f"{stale}n0"
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
        assert not root.exists()
    finally:
        c.close()
        sleeper.kill()
        subprocess.run(["ip", "link", "del", f"{stale}br"], capture_output=True)
        subprocess.run(["ip", "netns", "del", f"{stale}n0"], capture_output=True)
