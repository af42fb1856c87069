"""How every command finds the cluster this node belongs to: flag, then RAY_ADDRESS, then
the record `raylm up`/`join` left; the token that goes with it; a stale record named."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raylm.cluster import context, record
from raylm.cluster.ports import RayPorts
from raylm.cluster.ray_process import RUN_MARKER
from raylm.errors import ClusterError


@pytest.fixture(autouse=True)
def fresh_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node with its own raylm home and none of the variables a user might export."""
    for var in ("RAY_ADDRESS", "RAYLM_CLUSTER_TOKEN", *context.RAY_AUTH_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAYLM_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture
def raylet(tmp_path: Path) -> Iterator[str]:
    """A process named `raylet` carrying a run id, as `raylm up` leaves behind; its run id."""
    exe = tmp_path / "raylet"
    shutil.copy("/bin/sleep", exe)
    run_id = uuid.uuid4().hex
    p = subprocess.Popen([str(exe), "300"], env={RUN_MARKER: run_id})
    time.sleep(0.2)
    yield run_id
    p.kill()
    p.wait()


def _record(run_id: str, role: str = "worker", address: str = "10.1.0.1:6379") -> None:
    record.write_state(
        record.NodeState(
            role=role,
            node_ip="10.1.0.2",
            iface="eth0",
            address=address,
            run_id=run_id,
            processes=[],
            temp_dir="/x/.raylm/ray",
            dashboard_host="",
            auth=True,
            env={},
            ports=RayPorts(),
            started_at=time.time(),
        )
    )
    record.write_private(record.token_path(), "t" * 64)


def test_nothing_names_a_cluster() -> None:
    assert context.resolve(None) is None
    with pytest.raises(ClusterError) as e:
        context.require(None)
    assert e.value.command == "raylm up" and "join" in e.value.message()


def test_flag_then_env_then_record(raylet: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _record(raylet)
    ctx = context.require(None)
    assert (ctx.address, ctx.source, ctx.node_ip, ctx.token_source) == (
        "10.1.0.1:6379",
        "record",
        "10.1.0.2",
        "record",
    )
    assert ctx.temp_dir == "/x/.raylm/ray"
    monkeypatch.setenv("RAY_ADDRESS", "10.1.0.1")
    ctx = context.require(None)
    # Same cluster as the record: this node's IP and its kept token still apply.
    assert (ctx.address, ctx.source, ctx.token_source) == ("10.1.0.1:6379", "env", "record")
    ctx = context.require("10.2.0.1:7000")
    # Another cluster: nothing of this node's record applies to it.
    assert (ctx.address, ctx.source, ctx.node_ip, ctx.token_source) == (
        "10.2.0.1:7000",
        "flag",
        None,
        "none",
    )
    monkeypatch.setenv("RAYLM_CLUSTER_TOKEN", "e" * 64)
    assert context.require("10.2.0.1:7000").token_source == "env"


def test_auto_means_this_nodes_cluster(raylet: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(ClusterError, match="auto"):
        context.resolve(None)
    _record(raylet)
    assert context.require(None).address == "10.1.0.1:6379"


@pytest.mark.parametrize(
    ("role", "command"), [("worker", "raylm join 10.1.0.1:6379"), ("head", "raylm up")]
)
def test_stale_record_is_named_never_trusted(role: str, command: str) -> None:
    _record(uuid.uuid4().hex, role=role)  # no process carries this run id any more
    with pytest.raises(ClusterError) as e:
        context.resolve(None)
    msg = e.value.message()
    assert "stale" in msg and f"Ray {role} of 10.1.0.1:6379" in msg
    assert "restarted or its Ray processes were killed" in msg
    assert e.value.command == command
    # Another cluster named explicitly is unaffected by this node's stale record.
    assert context.require("10.2.0.1").source == "flag"


def test_malformed_addresses() -> None:
    for bad in ("10.1.0.1:x", ":6379"):
        with pytest.raises(ClusterError, match="HEAD_IP:PORT"):
            context.require(bad)


def test_auth_settings_are_applied_and_children_do_not_inherit_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from raylm.cluster import ray_process

    context.apply_auth(token="s" * 64)
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN"] == "s" * 64
    context.apply_auth(token_path="/p/token")
    assert "RAY_AUTH_TOKEN" not in os.environ and os.environ["RAY_AUTH_TOKEN_PATH"] == "/p/token"
    context.apply_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    context.apply_auth(token="s" * 64)
    seen: dict[str, str] = {}

    def fake_run(argv: list[str], env: dict[str, str], **_: object) -> object:
        seen.update(env)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(ray_process.subprocess, "run", fake_run)
    ray_process.start_ray(["ray", "start"], {"RAY_AUTH_TOKEN_PATH": "/p/token"}, Path("/nowhere"))
    assert "RAY_AUTH_TOKEN" not in seen and seen["RAY_AUTH_TOKEN_PATH"] == "/p/token"
    for var in context.RAY_AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
