"""What `raylm up` / `raylm join` recorded on this node, and whether it still holds.

The record lives in `cluster_dir()` of `$RAYLM_HOME`: `state.json` (role, address, run id,
pids) and `token` (0600). A record outlives the processes it describes when the machine
reboots or they are killed; `liveness` tells the two apart by looking for the run's raylet,
so a stale record is named and never trusted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster import ray_process
from raylm.cluster.ports import RayPorts
from raylm.errors import ClusterError
from raylm.home import cluster_dir


class NodeState(BaseModel):
    """What raylm started on this node (written by up/join, read by every other command)."""

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

    def describe(self) -> str:
        """One line naming what the record says, for messages."""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started_at))
        return f"a Ray {self.role} of {self.address} started here at {when} on {self.node_ip}"


def token_path() -> Path:
    """The cluster token of this node (0600)."""
    return cluster_dir() / "token"


def state_path() -> Path:
    """This node's record."""
    return cluster_dir() / "state.json"


def fingerprint_path() -> Path:
    """The head's fingerprint as it was at `raylm up` (head only)."""
    return cluster_dir() / "fingerprint.json"


def read_state() -> NodeState | None:
    """This node's record, or None when raylm started nothing here."""
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


def read_token() -> str | None:
    """The token kept on this node, or None."""
    try:
        return token_path().read_text().strip() or None
    except OSError:
        return None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def write_state(state: NodeState) -> None:
    write_private(state_path(), state.model_dump_json(indent=2))


def forget(*, keep_token: bool = False) -> None:
    """Remove this node's record (and the token unless `keep_token`)."""
    state_path().unlink(missing_ok=True)
    fingerprint_path().unlink(missing_ok=True)
    if not keep_token:
        token_path().unlink(missing_ok=True)


def is_live(state: NodeState) -> bool:
    """Whether the run the record describes still has its raylet (the node's Ray daemon).

    Other Ray processes of the run may linger after the raylet died; without the raylet
    the node is not part of any cluster, so the record is stale.
    """
    for p in ray_process.processes_of_run(state.run_id):
        try:
            if p.name() == "raylet":
                return True
        except Exception:
            continue
    return False


def stale_error(state: NodeState) -> ClusterError:
    """The error that names a stale record and the command that brings the node back."""
    if state.role == "head":
        fix = "Start the head again: it keeps the token, so the join lines printed before work"
        command = "raylm up"
    else:
        fix = "Run the join line again: it reuses the token kept on this node"
        command = f"raylm join {state.address}"
    return ClusterError(
        f"This node's raylm record is stale: it names {state.describe()}, "
        "but that Ray node no longer runs",
        why="the machine restarted or its Ray processes were killed",
        fix=fix,
        command=command,
    )
