"""Sync and verify across a real 3-node Ray cluster (network namespaces, one store per node).

The CLI runs on the head (node 0) exactly as a user would run it; each node's Ray worker
works on its own `$RAYLM_HOME`. Tests run in file order: fresh sync, corruption found and
repaired, a sync killed midway and resumed, the object-store transport, a full disk on a
worker (last: it mounts a tmpfs over a node's store).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from raylm.models.gguf import DEMO_NAME
from raylm.models.manifest import Manifest, sha256_file
from raylm.models.store import ModelStore
from raylm.testing.machine import raylm_argv
from raylm.testing.netns import NetnsCluster

pytestmark = pytest.mark.multinode


def _store(c: NetnsCluster, i: int) -> ModelStore:
    return ModelStore(c.nodes[i].raylm_home / "models")


def _drop(c: NetnsCluster, i: int) -> None:
    """Remove the demo model from node i's store (seen from the host: same disk)."""
    s = _store(c, i)
    s.forget(DEMO_NAME)
    shutil.rmtree(s.model_dir(DEMO_NAME), ignore_errors=True)


def _cli(c: NetnsCluster, *args: str, timeout: float = 600) -> tuple[int, Any, str]:
    p = c.raylm(0, "model", *args, timeout=timeout)
    try:
        data = json.loads(p.stdout) if "--json" in args else p.stdout
    except ValueError:
        pytest.fail(f"not JSON on stdout (rc {p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    return p.returncode, data, p.stderr


@pytest.fixture(scope="module")
def cluster(netns_cluster: NetnsCluster, demo_store: ModelStore) -> NetnsCluster:
    """The session cluster with the demo model on the head only."""
    c = netns_cluster
    _store(c, 0).copy_from(demo_store, DEMO_NAME)
    for i in (1, 2):
        _drop(c, i)
    return c


@pytest.fixture(scope="module")
def manifest(demo_store: ModelStore) -> Manifest:
    m = demo_store.read_manifest(DEMO_NAME)
    assert m is not None
    return m


def _same_as_manifest(c: NetnsCluster, i: int, m: Manifest) -> None:
    d = _store(c, i).model_dir(DEMO_NAME)
    assert sorted(p.name for p in d.iterdir()) == sorted(f.path for f in m.files)
    for f in m.files:
        assert sha256_file(d / f.path) == f.sha256, (i, f.path)


def test_fresh_sync_to_every_worker(cluster: NetnsCluster, manifest: Manifest) -> None:
    c = cluster
    rc, verify, _ = _cli(c, "verify", DEMO_NAME, "--nodes", "all", "--json")
    assert rc == 1
    for n in c.nodes[1:]:
        assert not verify[n.ip]["ok"]
        assert {p["path"] for p in verify[n.ip]["problems"]} >= {"model.safetensors"}
    rc, out, err = _cli(c, "sync", DEMO_NAME, "--json")
    assert rc == 0, err
    assert sorted(out) == [c.nodes[1].ip, c.nodes[2].ip]
    for n in c.nodes[1:]:
        r = out[n.ip]
        assert r["ok"], r
        assert r["files_sent"] == sorted(f.path for f in manifest.files)
        assert r["bytes_sent"] == manifest.size_bytes
        # Same relative layout on every node: <RAYLM_HOME>/models/<name>.
        assert r["path"] == str(n.raylm_home / "models" / DEMO_NAME)
    for i in (1, 2):
        _same_as_manifest(c, i, manifest)
        assert not list(_store(c, i).model_dir(DEMO_NAME).glob("*.part"))
    rc, verify, err = _cli(c, "verify", DEMO_NAME, "--nodes", "all", "--json")
    assert rc == 0, err
    assert all(v["ok"] and v["files_checked"] == len(manifest.files) for v in verify.values())
    assert sorted(verify) == sorted(n.ip for n in c.nodes)
    rc, listing, err = _cli(c, "list", "--nodes", "all", "--json")
    assert rc == 0, err
    (row,) = [r for r in listing if r["name"] == DEMO_NAME]
    assert row["nodes"] == {n.ip: "verified" for n in c.nodes}


def test_verify_on_nodes_api(cluster: NetnsCluster) -> None:
    """The call serve makes before placing replicas: cheap (stat) check, per node."""
    c = cluster
    code = (
        "import json, sys\n"
        "from raylm.cluster.context import ensure_attached\n"
        "from raylm.models.sync import verify_on_nodes\n"
        "ensure_attached()\n"
        "res = verify_on_nodes(sys.argv[1], sys.argv[2:])\n"
        "print(json.dumps({ip: r.model_dump(mode='json') for ip, r in res.items()}))\n"
    )
    ips = [n.ip for n in c.nodes] + [f"{c.subnet}.99"]
    p = c.run(0, [sys.executable, "-c", code, DEMO_NAME, *ips], timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert list(res) == ips
    for n in c.nodes:
        assert res[n.ip]["ok"] and res[n.ip]["bytes_hashed"] == 0  # stamps trusted, no hashing
    assert not res[f"{c.subnet}.99"]["ok"] and res[f"{c.subnet}.99"]["error"] == "node is not alive"


def test_corrupt_byte_is_found_and_only_that_file_resent(
    cluster: NetnsCluster, manifest: Manifest
) -> None:
    c = cluster
    w = c.nodes[2]
    weights = _store(c, 2).model_dir(DEMO_NAME) / "model.safetensors"
    st = weights.stat()
    with open(weights, "r+b") as f:  # one byte, mtime put back: only hashing can tell
        f.seek(12345678)
        b = f.read(1)
        f.seek(12345678)
        f.write(bytes([b[0] ^ 0x01]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, verify, err = _cli(c, "verify", DEMO_NAME, "--nodes", "all", "--json")
    assert rc == 1
    assert verify[c.nodes[0].ip]["ok"] and verify[c.nodes[1].ip]["ok"]
    bad = verify[w.ip]
    assert not bad["ok"]
    assert [(p["path"], p["problem"]) for p in bad["problems"]] == [("model.safetensors", "sha256")]
    assert w.ip in err and "model.safetensors" in err and "raylm model sync" in err
    rc, out, err = _cli(c, "sync", DEMO_NAME, "--json")
    assert rc == 0, err
    assert out[w.ip]["files_sent"] == ["model.safetensors"]
    assert out[w.ip]["files_kept"] == len(manifest.files) - 1
    assert out[c.nodes[1].ip]["files_sent"] == []
    _same_as_manifest(c, 2, manifest)


def test_killed_sync_resumes_where_it_stopped(cluster: NetnsCluster, manifest: Manifest) -> None:
    c = cluster
    _drop(c, 1)
    d = _store(c, 1).model_dir(DEMO_NAME)
    part = d / "model.safetensors.part"
    # Capped at 40 MB/s so the kill lands mid-file on any machine.
    p = c.popen(
        0,
        raylm_argv("model", "sync", DEMO_NAME, "--nodes", c.nodes[1].ip, "--limit-rate", "40"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not (part.exists() and part.stat().st_size > 64 * 2**20):
        assert p.poll() is None, "sync ended before it could be interrupted"
        assert time.monotonic() < deadline, "sync never got going"
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    # Ray stops the dead driver's agents: wait until the partial file stops growing.
    kept, still_since = part.stat().st_size, time.monotonic()
    while time.monotonic() - still_since < 2:
        assert time.monotonic() < deadline + 60, "the killed sync's agent kept writing"
        time.sleep(0.2)
        if part.stat().st_size != kept:
            kept, still_since = part.stat().st_size, time.monotonic()
    weights = manifest.file("model.safetensors")
    assert weights is not None and 0 < kept < weights.size
    assert not (d / "model.safetensors").exists()  # nothing partial at the final path
    assert _store(c, 1).read_manifest(DEMO_NAME) is None
    rc, out, err = _cli(c, "sync", DEMO_NAME, "--nodes", c.nodes[1].ip, "--json")
    assert rc == 0, err
    r = out[c.nodes[1].ip]
    assert r["ok"] and r["bytes_resumed"] >= kept > 0
    sizes = {f.path: f.size for f in manifest.files}
    assert "model.safetensors" in r["files_sent"]
    # Only the missing tails crossed the network (files finished before the kill stay).
    assert r["bytes_sent"] == sum(sizes[f] for f in r["files_sent"]) - r["bytes_resumed"]
    assert r["bytes_sent"] <= manifest.size_bytes - kept
    _same_as_manifest(c, 1, manifest)


def test_object_store_transport(cluster: NetnsCluster, manifest: Manifest) -> None:
    """The transport that needs no port beyond Ray's own gives the same bytes."""
    c = cluster
    _drop(c, 1)
    rc, out, err = _cli(
        c, "sync", DEMO_NAME, "--nodes", c.nodes[1].ip, "--transport", "object-store", "--json"
    )
    assert rc == 0, err
    r = out[c.nodes[1].ip]
    assert r["ok"] and r["bytes_sent"] == manifest.size_bytes
    _same_as_manifest(c, 1, manifest)


def test_full_disk_on_a_worker_is_reported(cluster: NetnsCluster, manifest: Manifest) -> None:
    c = cluster
    w = c.nodes[2]
    root = w.raylm_home / "models"
    # A 64 MiB tmpfs as that node's store, visible only in its mount namespace.
    m = c.run(2, ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(root)])
    assert m.returncode == 0, m.stderr
    try:
        rc, out, err = _cli(c, "sync", DEMO_NAME, "--nodes", w.ip, "--json")
        assert rc == 1
        r = out[w.ip]
        assert not r["ok"]
        assert f"Not enough disk space on node {w.ip}" in r["error"]
        assert "MiB free" in r["error"]
        assert w.ip in err
        ls = c.run(2, ["find", str(root), "-name", "model.safetensors*"])
        assert ls.returncode == 0 and ls.stdout.strip() == ""
    finally:
        c.run(2, ["umount", str(root)])
    rc, verify, _ = _cli(c, "verify", DEMO_NAME, "--nodes", w.ip, "--json")
    assert rc == 0 and verify[w.ip]["ok"]  # the real store under the mount is untouched
