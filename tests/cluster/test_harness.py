"""The netns harness itself: nodes, addresses, faults, and a clean teardown."""

from __future__ import annotations

import socket
import sys
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


def test_three_nodes_alive_with_token_auth(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    assert c.wait_alive(3) == sorted(n.ip for n in c.nodes)
    assert c.token and c.env_for(1)["RAY_AUTH_TOKEN"] == c.token
    token_file = c.nodes[0].home / "cluster" / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    # Each node's Ray processes carry that node's RAYLM_HOME.
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
        assert homes == {str(n.home)}


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
