"""`raylm up`, `raylm join` and `raylm down`: start and stop this node's part of a cluster.

What raylm started is recorded on the node (`raylm.cluster.record`). A record whose Ray node
no longer runs (a reboot, `kill -9`) is stale: `up` and `join` clean what is left of it and
start fresh, keeping the cluster token, so the join line printed before works again.

The head's fingerprint is also put in the GCS internal key-value store (namespace
`raylm`). A joining node reads it there before it starts anything: the GCS port is the
one port a joining node must reach anyway, the read needs the cluster token (so it is
no new unauthenticated surface), and the value lives exactly as long as the cluster.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster import context, ray_process, record
from raylm.cluster.fingerprint import Difference, Fingerprint, compare, local_fingerprint
from raylm.cluster.gpu import nvml_inventory
from raylm.cluster.netif import NetInterface, choose_interface, network_env
from raylm.cluster.ports import DEFAULT_PORTS, RayPorts
from raylm.cluster.record import NodeState
from raylm.errors import ClusterError
from raylm.home import raylm_home

log = logging.getLogger(__name__)

KV_NAMESPACE = b"raylm"
KV_FINGERPRINT = b"fingerprint/head"


class UpResult(BaseModel):
    """What `up`/`join` did, for the CLI to print."""

    model_config = ConfigDict(extra="forbid")

    state: NodeState = Field(description="The node's recorded state.")
    join_command: str = Field(description="Command to run on each worker ('' for a worker).")
    fingerprint: Fingerprint = Field(description="This node's fingerprint.")
    diffs: list[Difference] = Field(
        default_factory=list, description="Version differences with the head that were allowed."
    )
    notes: list[str] = Field(
        default_factory=list, description="What was found and done on the way, for the user."
    )


class VersionMismatch(ClusterError):
    """`join` refused: this node's versions differ from the head's (the data is in `diffs`)."""

    def __init__(self, address: str, diffs: list[Difference]) -> None:
        self.diffs = diffs
        table = "; ".join(f"{d.field}: head {d.expected}, here {d.actual}" for d in diffs)
        fixes = "; ".join(f"{d.field}: {d.fix}" for d in diffs)
        super().__init__(
            f"This node's versions differ from the head's ({address}): {table}",
            why="Ray and vLLM workers on different versions fail at run time, not at join",
            fix=f"Make them equal ({fixes}), or pass --force to join anyway",
            command=f"raylm join {address} --force",
        )


# Ray puts unix sockets at <temp dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store
# (64 bytes after the temp dir with a 7-digit pid), and a socket path has at most 107.
_MAX_TEMP_DIR = 43


def _default_temp_dir() -> Path:
    # Ray's default /tmp/ray is shared by every Ray on the host; one per RAYLM_HOME is not.
    home = raylm_home().resolve()
    if len(str(home / "ray")) <= _MAX_TEMP_DIR:
        return home / "ray"
    # A deep HOME would make Ray's socket paths too long: a short dir named after it.
    return Path("/tmp") / f"raylm-{hashlib.sha256(str(home).encode()).hexdigest()[:10]}"


def _check_temp_dir(tdir: Path) -> None:
    if len(str(tdir)) > _MAX_TEMP_DIR:
        raise ClusterError(
            f"Ray's temp dir {tdir} is {len(str(tdir))} characters long",
            why=f"Ray's unix socket paths under it would exceed 107 bytes (keep it to "
            f"{_MAX_TEMP_DIR} or fewer)",
            fix="Pick a shorter --temp-dir, or leave it out",
            command="raylm up --temp-dir /tmp/raylm",
        )


def _ray_env(nic: NetInterface, auth: bool, temp_dir: Path) -> dict[str, str]:
    env = network_env(nic)
    env["RAYLM_HOME"] = str(raylm_home())
    env["RAY_TMPDIR"] = str(temp_dir.parent)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_NODE_IP_ADDRESS"] = nic.ip
    if auth:
        env["RAY_AUTH_MODE"] = "token"
        # A path, not the token itself, so it does not show in every worker's environment.
        env["RAY_AUTH_TOKEN_PATH"] = str(record.token_path())
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def _gpu_count() -> int:
    return len(nvml_inventory()["gpus"])


def _start_node(
    role: str,
    nic: NetInterface,
    address: str,
    token: str | None,
    temp_dir: Path | None,
    num_cpus: int | None,
    num_gpus: int | None,
    ports: RayPorts,
    dashboard_host: str,
    **start: Any,
) -> NodeState:
    """Keep the token, `ray start` this node with its network environment, and record it."""
    if token is not None:
        record.write_private(record.token_path(), token)
    tdir = (temp_dir or _default_temp_dir()).resolve()
    _check_temp_dir(tdir)
    argv = ray_process.ray_start_argv(
        node_ip=nic.ip,
        ports=ports,
        temp_dir=tdir,
        num_cpus=num_cpus,
        num_gpus=_gpu_count() if num_gpus is None else num_gpus,
        dashboard_host=dashboard_host,
        **start,
    )
    env = _ray_env(nic, token is not None, tdir)
    run_id, _ = ray_process.start_ray(argv, env, tdir)
    state = NodeState(
        role=role,
        node_ip=nic.ip,
        iface=nic.name,
        address=address,
        run_id=run_id,
        processes=ray_process.snapshot(ray_process.processes_of_run(run_id)),
        temp_dir=str(tdir),
        dashboard_host=dashboard_host,
        auth=token is not None,
        env={k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"},
        ports=ports,
        started_at=time.time(),
    )
    record.write_state(state)
    return state


def _clear_stale(state: NodeState, *, keep_token: bool) -> str:
    """Stop what is left of a stale run and remove its record; returns a note for the user."""
    left = ray_process.stop_run(state.run_id, recorded=state.processes, grace=3.0)
    record.forget(keep_token=keep_token)
    extra = f"; stopped {len(left)} leftover process(es)" if left else ""
    return (
        f"found a stale record ({state.describe()}; its Ray node no longer ran, or the "
        f"cluster had declared it dead){extra}"
    )


def _refuse_running(state: NodeState) -> ClusterError:
    return ClusterError(
        f"raylm already runs {state.describe()}",
        fix="Stop it first",
        command="raylm down",
    )


def publish_fingerprint(address: str, fp: Fingerprint) -> None:
    """Put the head's fingerprint in the GCS key-value store (auth already applied)."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    GcsClient(address=address).internal_kv_put(
        KV_FINGERPRINT, fp.model_dump_json().encode(), True, KV_NAMESPACE
    )


def read_head_fingerprint(address: str, token: str | None, timeout: float = 10) -> Fingerprint:
    """The head's fingerprint, read from its GCS (needs the cluster token)."""
    # The short-lived CLI process holds the token it was given; `ray start` children do not
    # inherit it (ray_process strips Ray's auth variables and passes a token path instead).
    context.apply_auth(token=token)
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    try:
        raw = GcsClient(address=address).internal_kv_get(
            KV_FINGERPRINT, KV_NAMESPACE, timeout=timeout
        )
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


def alive_in_cluster(address: str, token: str | None, node_ip: str) -> bool | None:
    """Whether the GCS at `address` lists a node alive at `node_ip` (None: no answer)."""
    context.apply_auth(token=token)
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    try:
        nodes = GcsClient(address=address).get_all_node_info(
            timeout=10, state_filter=GcsNodeInfo.GcsNodeState.ALIVE
        )
    except Exception:
        return None
    return any(n.node_manager_address == node_ip for n in nodes.values())


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
    notes: list[str] = []
    token: str | None = None
    old = record.read_state()
    if old is not None:
        if record.is_live(old):
            raise _refuse_running(old)
        reuse = auth and old.role == "head" and old.auth
        token = record.read_token() if reuse else None
        notes.append(_clear_stale(old, keep_token=reuse))
        if token:
            notes.append("kept the cluster token, so the join lines printed before still work")
    nic = choose_interface(node_ip=node_ip, iface=iface)
    if auth and token is None:
        token = secrets.token_hex(32)
    address = f"{nic.ip}:{ports.gcs}"
    state = _start_node(
        "head",
        nic,
        address,
        token,
        temp_dir,
        num_cpus,
        num_gpus,
        ports,
        dashboard_host,
        head=True,
    )
    fp = local_fingerprint()
    try:
        context.apply_auth(token_path=str(record.token_path()) if token else None)
        publish_fingerprint(address, fp)
    except Exception as e:
        ray_process.stop_run(state.run_id)
        record.forget()
        raise ClusterError(
            "Ray started but raylm could not record the head's fingerprint in its GCS",
            why=f"{type(e).__name__}: {e}",
            fix="Retry; if it persists run with --debug",
            command="raylm up --debug",
        ) from e
    record.write_private(record.fingerprint_path(), fp.model_dump_json(indent=2))
    cmd = f"raylm join {address}"
    if token:
        cmd += f" --token {token}"
    return UpResult(state=state, join_command=cmd, fingerprint=fp, notes=notes)


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
    address: str,
    *,
    token: str | None,
    node_ip: str | None = None,
    iface: str | None = None,
    ports: RayPorts = DEFAULT_PORTS,
) -> JoinPreflight:
    """Check the head's ports and compare fingerprints; start and write nothing."""
    host, gcs_port = context.split_address(address, ports.gcs)
    nic = choose_interface(node_ip=node_ip, iface=iface, reach=host)
    dead = check_head_ports(host, ports, gcs_port)
    if dead:
        raise ClusterError(
            f"The head's ports do not answer from {nic.ip}: " + ", ".join(dead),
            why="the head is down, or a firewall between the nodes blocks them",
            fix=f"Open TCP {ports.firewall_rule()} between all nodes; with ufw, on the head: "
            f"`{ports.ufw_command(nic.ip)}` and `sudo ufw reload`",
            command=f"nc -vz {host} {gcs_port}",
        )
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

    The token is `token`, else $RAYLM_CLUSTER_TOKEN, else the one kept from an earlier join
    of the same cluster. Refuses (before starting Ray) when the head's ports do not answer or
    when Python, Ray, vLLM or torch differ from the head's, unless `force`. Running the same
    join line again on a node that is already part of that cluster changes nothing.
    """
    host, gcs_port = context.split_address(head, ports.gcs, "head address")
    address = f"{host}:{gcs_port}"
    old = record.read_state()
    same = old is not None and context.same_cluster(old.address, address)
    token = token or os.environ.get(context.TOKEN_ENV) or (record.read_token() if same else None)
    if old is not None and record.is_live(old):
        if not same:
            raise _refuse_running(old)
        # A node cut off the network and back keeps its raylet until that learns the cluster
        # declared it dead (minutes): its Ray runs, yet it is no part of the cluster.
        if alive_in_cluster(address, token, old.node_ip) is not False:
            note = f"this node is already part of {address} ({old.describe()})"
            return UpResult(
                state=old, join_command="", fingerprint=local_fingerprint(), notes=[note]
            )
    pre = join_preflight(address, token=token, node_ip=node_ip, iface=iface, ports=ports)
    if pre.fingerprint_error and not force:
        raise ClusterError(pre.fingerprint_error, command=f"raylm join {address} --token TOKEN")
    if pre.blocking and not force:
        raise VersionMismatch(address, pre.blocking)
    notes = [_clear_stale(old, keep_token=False)] if old is not None else []
    state = _start_node(
        "worker",
        pre.nic,
        address,
        token,
        temp_dir,
        num_cpus,
        num_gpus,
        ports,
        "",
        head=False,
        head_address=address,
    )
    return UpResult(
        state=state, join_command="", fingerprint=local_fingerprint(), diffs=pre.diffs, notes=notes
    )


def down() -> list[int]:
    """Stop what raylm started on this node; return the pids signalled."""
    st = record.read_state()
    if st is None:
        return []
    pids = ray_process.stop_run(st.run_id, recorded=st.processes)
    record.forget()
    return pids
