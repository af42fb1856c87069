"""Attach to the cluster and run a function on every alive node (a Ray task pinned there).

NVML, /dev/shm and interfaces can only be read on the node itself, so status and doctor
send one small task per node with NodeAffinitySchedulingStrategy(soft=False).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ClusterError

log = logging.getLogger(__name__)

NAMESPACE = "raylm"


class RayNode(BaseModel):
    """One node as Ray's GCS lists it."""

    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(description="Ray node id (hex).")
    ip: str = Field(description="NodeManagerAddress.")
    alive: bool = Field(description="Whether the GCS sees it alive.")
    is_head: bool = Field(description="Whether it is the head node.")
    resources: dict[str, float] = Field(description="Ray resources it advertises.")


def resolve_address(address: str | None) -> str:
    """The cluster to attach to: the argument, $RAY_ADDRESS, or what `raylm up/join` recorded."""
    from raylm.cluster.bringup import read_state

    if address:
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    st = read_state()
    if st:
        return st.address
    raise ClusterError(
        "No Ray cluster to attach to",
        why="no --address, no RAY_ADDRESS, and raylm started no cluster on this node",
        fix="Start one with `raylm up` (or join one), or pass --address HEAD_IP:6379",
        command="raylm up",
    )


def attach(address: str | None = None) -> str:
    """ray.init() against the cluster this node belongs to; returns the GCS address."""
    import ray

    from raylm.cluster.bringup import read_state, token_path

    addr = resolve_address(address)
    if ray.is_initialized():
        return addr
    st = read_state()
    kwargs: dict[str, Any] = {}
    if st is not None:
        if st.auth and not os.environ.get("RAY_AUTH_TOKEN"):
            os.environ.setdefault("RAY_AUTH_MODE", "token")
            os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(token_path()))
        # The driver finds this node's raylet under the node's own temp dir.
        os.environ.setdefault("RAY_TMPDIR", str(Path(st.temp_dir).parent))
        kwargs["_node_ip_address"] = st.node_ip
    try:
        ray.init(
            address=addr,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=False,
            **kwargs,
        )
    except Exception as e:
        raise ClusterError(
            f"Cannot attach to the Ray cluster at {addr}",
            why=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            fix="Run this on a node of the cluster (after `raylm up`/`raylm join`), "
            "with the cluster's token",
            command="raylm doctor",
        ) from None
    return addr


def ray_nodes() -> list[RayNode]:
    """Every node the GCS knows, alive or dead (latest record per IP first alive)."""
    import ray

    out = []
    for n in ray.nodes():
        res = {k: float(v) for k, v in (n.get("Resources") or {}).items()}
        out.append(
            RayNode(
                node_id=n["NodeID"],
                ip=n["NodeManagerAddress"],
                alive=bool(n["Alive"]),
                is_head="node:__internal_head__" in res,
                resources=res,
            )
        )
    # A restarted node leaves a dead record behind; keep only its newest state.
    alive_ips = {n.ip for n in out if n.alive}
    return [n for n in out if n.alive or n.ip not in alive_ips]


def run_on_nodes(
    fn: Callable[..., Any],
    nodes: list[RayNode],
    *args: Any,
    timeout: float = 120,
    per_node_args: dict[str, tuple[Any, ...]] | None = None,
) -> dict[str, Any]:
    """Run fn(*args) once on each alive node; return {node_id: result or Exception}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {}
    for n in nodes:
        if not n.alive:
            continue
        a = (per_node_args or {}).get(n.node_id, args)
        refs[n.node_id] = remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(*a)
    out: dict[str, Any] = {}
    _, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    for nid, ref in refs.items():
        if ref in pending:
            ray.cancel(ref, force=True)
            out[nid] = TimeoutError(f"no answer in {timeout:.0f} s")
            continue
        try:
            out[nid] = ray.get(ref)
        except Exception as e:
            out[nid] = e
    return out
