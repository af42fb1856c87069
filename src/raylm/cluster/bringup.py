"""`raylm up`, `raylm join` and `raylm down`: start and stop this node's part of a cluster.

State of what raylm started lives in `cluster_dir()` of `$RAYLM_HOME`: `token` (0600),
`state.json` (role, address, run id, pids) and, on the head, `fingerprint.json`.

The head's fingerprint is also put in the GCS internal key-value store (namespace
`raylm`). A joining node reads it there before it starts anything: the GCS port is the
one port a joining node must reach anyway, the read needs the cluster token (so it is
no new unauthenticated surface), and the value lives exactly as long as the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster import ray_process
from raylm.cluster.fingerprint import Difference, Fingerprint, compare, local_fingerprint
from raylm.cluster.gpu import nvml_inventory
from raylm.cluster.netif import NetInterface, choose_interface, network_env
from raylm.cluster.ports import DEFAULT_PORTS, RayPorts
from raylm.errors import ClusterError
from raylm.home import cluster_dir, raylm_home

log = logging.getLogger(__name__)

KV_NAMESPACE = b"raylm"
KV_FINGERPRINT = b"fingerprint/head"
TOKEN_ENV = "RAYLM_CLUSTER_TOKEN"


class NodeState(BaseModel):
    """What raylm started on this node (written by up/join, read by down/status/doctor)."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(description="'head' or 'worker'.")
    node_ip: str = Field(description="The IP Ray uses on this node.")
    iface: str = Field(description="The interface holding node_ip.")
    address: str = Field(description="GCS address of the cluster, ip:port.")
    run_id: str = Field(description="Marker in the environment of every process raylm started.")
    processes: list[tuple[int, float]] = Field(
        description="(pid, create time) of the Ray processes seen right after start."
    )
    temp_dir: str = Field(description="Ray's temp dir on this node.")
    dashboard_host: str = Field(description="Address the dashboard binds to (head only).")
    auth: bool = Field(description="Whether Ray token authentication is on.")
    env: dict[str, str] = Field(description="Network variables given to the node's Ray processes.")
    ports: RayPorts = Field(description="Ports Ray listens on.")
    started_at: float = Field(description="Unix time of the start.")


class UpResult(BaseModel):
    """What `up`/`join` did, for the CLI to print."""

    model_config = ConfigDict(extra="forbid")

    state: NodeState = Field(description="The node's recorded state.")
    join_command: str = Field(description="Command to run on each worker ('' for a worker).")
    fingerprint: Fingerprint = Field(description="This node's fingerprint.")


def token_path() -> Path:
    return cluster_dir() / "token"


def state_path() -> Path:
    return cluster_dir() / "state.json"


def read_state() -> NodeState | None:
    """This node's recorded state, or None when raylm started nothing here."""
    p = state_path()
    if not p.exists():
        return None
    try:
        return NodeState.model_validate_json(p.read_text())
    except ValueError as e:
        raise ClusterError(
            f"Cannot read {p}",
            why=str(e).splitlines()[0],
            fix="Remove the file if no raylm cluster runs on this node",
            command=f"rm {p}",
        ) from e


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _default_temp_dir() -> Path:
    # Ray's default /tmp/ray is shared by every Ray on the host; one per RAYLM_HOME is not.
    return raylm_home() / "ray"


def _ray_env(nic: NetInterface, auth: bool, temp_dir: Path) -> dict[str, str]:
    env = network_env(nic)
    env["RAYLM_HOME"] = str(raylm_home())
    env["RAY_TMPDIR"] = str(temp_dir.parent)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_NODE_IP_ADDRESS"] = nic.ip
    if auth:
        env["RAY_AUTH_MODE"] = "token"
        # A path, not the token itself, so it does not show in every worker's environment.
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path())
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def _gpu_count() -> int:
    return len(nvml_inventory()["gpus"])


def _record_node(
    role: str,
    nic: NetInterface,
    address: str,
    run_id: str,
    tdir: Path,
    env: dict[str, str],
    ports: RayPorts,
    auth: bool,
    dashboard_host: str,
) -> NodeState:
    """Write what raylm started on this node (0600), for `down`, `status` and `serve`."""
    state = NodeState(
        role=role,
        node_ip=nic.ip,
        iface=nic.name,
        address=address,
        run_id=run_id,
        processes=ray_process.snapshot(ray_process.processes_of_run(run_id)),
        temp_dir=str(tdir),
        dashboard_host=dashboard_host,
        auth=auth,
        env={k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"},
        ports=ports,
        started_at=time.time(),
    )
    _write_private(state_path(), state.model_dump_json(indent=2))
    return state


def _start_node(
    nic: NetInterface,
    token: str | None,
    temp_dir: Path | None,
    num_cpus: int | None,
    num_gpus: int | None,
    ports: RayPorts,
    **role: Any,
) -> tuple[Path, str, dict[str, str]]:
    """Keep the token, then `ray start` this node (head or worker, per `role`) with the
    network environment; returns the temp dir, raylm's run id and that environment."""
    if token is not None:
        _write_private(token_path(), token)
    tdir = (temp_dir or _default_temp_dir()).resolve()
    argv = ray_process.ray_start_argv(
        node_ip=nic.ip,
        ports=ports,
        temp_dir=tdir,
        num_cpus=num_cpus,
        num_gpus=_gpu_count() if num_gpus is None else num_gpus,
        **role,
    )
    env = _ray_env(nic, token is not None, tdir)
    run_id, _ = ray_process.start_ray(argv, env)
    return tdir, run_id, env


def _guard_not_running() -> None:
    st = read_state()
    if st and ray_process.processes_of_run(st.run_id):
        raise ClusterError(
            f"raylm already runs a Ray {st.role} on this node ({st.address})",
            fix="Stop it first",
            command="raylm down",
        )


def _gcs_client(address: str, token: str | None) -> object:
    if token is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = token
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    return GcsClient(address=address)


def publish_fingerprint(address: str, fp: Fingerprint, token: str | None) -> None:
    """Put the head's fingerprint in the GCS key-value store."""
    c = _gcs_client(address, token)
    c.internal_kv_put(KV_FINGERPRINT, fp.model_dump_json().encode(), True, KV_NAMESPACE)  # type: ignore[attr-defined]


def read_head_fingerprint(address: str, token: str | None, timeout: float = 10) -> Fingerprint:
    """The head's fingerprint, read from its GCS (needs the cluster token)."""
    try:
        c = _gcs_client(address, token)
        raw = c.internal_kv_get(KV_FINGERPRINT, KV_NAMESPACE, timeout=timeout)  # type: ignore[attr-defined]
    except Exception as e:
        raise ClusterError(
            f"Cannot read the head's fingerprint from {address}",
            why=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            fix="Check the token (the one `raylm up` printed) and that the head runs raylm",
        ) from e
    if not raw:
        raise ClusterError(
            f"The head at {address} has no raylm fingerprint",
            why="it was not started with `raylm up`",
            fix="Start the head with `raylm up`, or pass --force to join without the check",
        )
    return Fingerprint.model_validate_json(raw)


def up(
    *,
    node_ip: str | None = None,
    iface: str | None = None,
    dashboard_host: str = "127.0.0.1",
    auth: bool = True,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    ports: RayPorts = DEFAULT_PORTS,
    temp_dir: Path | None = None,
) -> UpResult:
    """Start this node as the Ray head of a new cluster."""
    _guard_not_running()
    nic = choose_interface(node_ip=node_ip, iface=iface)
    token = secrets.token_hex(32) if auth else None
    tdir, run_id, env = _start_node(
        nic, token, temp_dir, num_cpus, num_gpus, ports, head=True, dashboard_host=dashboard_host
    )
    address = f"{nic.ip}:{ports.gcs}"
    fp = local_fingerprint()
    try:
        publish_fingerprint(address, fp, token)
    except Exception as e:
        ray_process.stop_run(run_id)
        raise ClusterError(
            "Ray started but raylm could not record the head's fingerprint in its GCS",
            why=f"{type(e).__name__}: {e}",
            fix="Retry; if it persists run with --debug",
            command="raylm up --debug",
        ) from e
    state = _record_node("head", nic, address, run_id, tdir, env, ports, auth, dashboard_host)
    _write_private(cluster_dir() / "fingerprint.json", fp.model_dump_json(indent=2))
    cmd = f"raylm join {address}"
    if token:
        cmd += f" --token {token}"
    return UpResult(state=state, join_command=cmd, fingerprint=fp)


def parse_head(head: str, default_port: int) -> tuple[str, int]:
    host, _, port = head.partition(":")
    if not host:
        raise ClusterError(f"Bad head address {head!r}", fix="Use HEAD_IP or HEAD_IP:PORT")
    try:
        return host, int(port) if port else default_port
    except ValueError as e:
        raise ClusterError(
            f"Bad port in head address {head!r}", fix="Use HEAD_IP or HEAD_IP:PORT"
        ) from e


def check_head_ports(host: str, ports: RayPorts, gcs_port: int) -> list[str]:
    """Names of the head's ports that do not answer a TCP connect from here."""
    want = {"gcs": gcs_port, **ports.node_ports()}
    return [
        f"{name} ({host}:{port})"
        for name, port in want.items()
        if not ray_process.wait_port(host, port, timeout=3)
    ]


class JoinPreflight(BaseModel):
    """What `join` checks before it starts anything."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="The head's GCS address, ip:port.")
    nic: NetInterface = Field(description="This node's interface toward the head.")
    diffs: list[Difference] = Field(description="Fingerprint differences, head vs this node.")
    fingerprint_error: str = Field(description="Why the head's fingerprint could not be read.")

    @property
    def blocking(self) -> list[Difference]:
        return [d for d in self.diffs if d.blocking]


def join_preflight(
    head: str,
    *,
    token: str | None,
    node_ip: str | None = None,
    iface: str | None = None,
    ports: RayPorts = DEFAULT_PORTS,
) -> JoinPreflight:
    """Check the head's ports and compare fingerprints; start nothing."""
    host, gcs_port = parse_head(head, ports.gcs)
    nic = choose_interface(node_ip=node_ip, iface=iface, reach=host)
    dead = check_head_ports(host, ports, gcs_port)
    if dead:
        raise ClusterError(
            f"The head's ports do not answer from {nic.ip}: " + ", ".join(dead),
            why="the head is down, or a firewall between the nodes blocks them",
            fix=f"Open TCP {ports.firewall_rule()} between all nodes",
            command=f"nc -vz {host} {gcs_port}",
        )
    address = f"{host}:{gcs_port}"
    try:
        head_fp = read_head_fingerprint(address, token)
    except ClusterError as e:
        return JoinPreflight(address=address, nic=nic, diffs=[], fingerprint_error=e.message())
    return JoinPreflight(
        address=address, nic=nic, diffs=compare(head_fp, local_fingerprint()), fingerprint_error=""
    )


def join(
    head: str,
    *,
    token: str | None = None,
    node_ip: str | None = None,
    iface: str | None = None,
    force: bool = False,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    ports: RayPorts = DEFAULT_PORTS,
    temp_dir: Path | None = None,
) -> UpResult:
    """Join this node to the cluster whose head is `head` (ip or ip:port).

    Refuses (before starting Ray) when the head's ports do not answer or when Python,
    Ray, vLLM or torch differ from the head's, unless `force`.
    """
    _guard_not_running()
    token = token or os.environ.get(TOKEN_ENV) or None
    pre = join_preflight(head, token=token, node_ip=node_ip, iface=iface, ports=ports)
    if pre.fingerprint_error and not force:
        raise ClusterError(pre.fingerprint_error, command=f"raylm join {head} --token TOKEN")
    if pre.blocking and not force:
        raise mismatch_error(pre.address, pre.blocking)
    address, nic = pre.address, pre.nic
    fp = local_fingerprint()
    auth = token is not None
    tdir, run_id, env = _start_node(
        nic, token, temp_dir, num_cpus, num_gpus, ports, head=False, head_address=address
    )
    state = _record_node("worker", nic, address, run_id, tdir, env, ports, auth, "")
    return UpResult(state=state, join_command="", fingerprint=fp)


def mismatch_error(address: str, diffs: list[Difference]) -> ClusterError:
    """The error `join` raises when this node's versions differ from the head's."""
    table = "; ".join(f"{d.field}: head {d.expected}, here {d.actual}" for d in diffs)
    fixes = "; ".join(f"{d.field}: {d.fix}" for d in diffs)
    return ClusterError(
        f"This node's versions differ from the head's ({address}): {table}",
        why="Ray and vLLM workers on different versions fail at run time, not at join",
        fix=f"Make them equal ({fixes}), or pass --force to join anyway",
        command=f"raylm join {address} --force",
    )


def down() -> list[int]:
    """Stop what raylm started on this node; return the pids signalled."""
    st = read_state()
    if st is None:
        return []
    pids = ray_process.stop_run(st.run_id, recorded=st.processes)
    state_path().unlink(missing_ok=True)
    if st.role == "head":
        (cluster_dir() / "fingerprint.json").unlink(missing_ok=True)
    token_path().unlink(missing_ok=True)
    return pids


def state_json(st: NodeState) -> str:
    return json.dumps(st.model_dump(), indent=2)
