"""`raylm status`: every node of the cluster with what it has and what raylm runs there."""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster.context import ensure_attached
from raylm.cluster.fingerprint import Fingerprint
from raylm.cluster.node import GpuInfo, NodeFacts, local_node_facts
from raylm.cluster.nodes import NodeView, cluster_nodes
from raylm.cluster.pinned import run_on_nodes
from raylm.errors import exception_line

log = logging.getLogger(__name__)


class NodeInventory(BaseModel):
    """One node of the cluster."""

    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(description="Ray node id.")
    ip: str = Field(description="The node's IP in the cluster.")
    role: str = Field(description="'head' or 'worker'.")
    alive: bool = Field(description="Whether Ray sees the node alive.")
    cpus: float = Field(description="CPUs Ray may schedule on the node.")
    ray_gpus: float = Field(description="GPUs Ray may schedule on the node.")
    memory_bytes: int = Field(description="Total memory of the node (0 when unknown).")
    disk_free_bytes: int = Field(description="Free disk in the node's model store.")
    model_store: str = Field(description="Path of the node's model store.")
    shm_bytes: int = Field(description="Size of /dev/shm on the node.")
    gpus: list[GpuInfo] = Field(description="GPUs read through NVML on the node.")
    infiniband: bool = Field(
        default=False, description="Whether the node has an InfiniBand/RoCE device."
    )
    versions: Fingerprint | None = Field(description="Versions installed on the node.")
    raylm_actors: list[str] = Field(description="raylm actors placed on the node.")
    error: str = Field(description="Why facts are missing ('' when complete).")


class ClusterInventory(BaseModel):
    """The whole cluster, as `raylm status --json` prints it."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="GCS address of the cluster.")
    taken_at: float = Field(description="Unix time of the snapshot.")
    nodes: list[NodeInventory] = Field(description="Every node, head first.")
    actors_error: str = Field(description="Why actors could not be listed ('' when they were).")

    @property
    def alive_nodes(self) -> list[NodeInventory]:
        return [n for n in self.nodes if n.alive]


def _facts_on_node() -> NodeFacts:
    return local_node_facts()


def _actors_by_node() -> tuple[dict[str, list[str]], str]:
    try:
        from ray.util.state import list_actors

        actors = list_actors(
            filters=[("state", "=", "ALIVE")], timeout=10, raise_on_missing_output=False
        )
    except Exception as e:
        return {}, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    by: dict[str, list[str]] = {}
    for a in actors:
        ns = getattr(a, "ray_namespace", "") or ""
        name = getattr(a, "name", "") or ""
        cls = getattr(a, "class_name", "") or ""
        if ns != "raylm" and not name.startswith("raylm"):
            continue
        by.setdefault(str(getattr(a, "node_id", "")), []).append(name or cls)
    return by, ""


def node_inventory(
    n: NodeView, facts: NodeFacts | None, err: str, actors: list[str]
) -> NodeInventory:
    return NodeInventory(
        node_id=n.node_id,
        ip=n.ip,
        role="head" if n.is_head else "worker",
        alive=n.alive,
        cpus=n.resources.get("CPU", 0.0),
        ray_gpus=n.resources.get("GPU", 0.0),
        memory_bytes=facts.memory_bytes if facts else 0,
        disk_free_bytes=facts.disk_free_bytes if facts else 0,
        model_store=facts.model_store if facts else "",
        shm_bytes=facts.shm_bytes if facts else 0,
        gpus=facts.gpus if facts else [],
        infiniband=facts.infiniband if facts else False,
        versions=facts.fingerprint if facts else None,
        raylm_actors=sorted(actors),
        error=err,
    )


def cluster_inventory(address: str | None = None, *, timeout: float = 120) -> ClusterInventory:
    """Attach to the cluster (address, $RAY_ADDRESS, or this node's) and inventory every node."""
    addr = ensure_attached(address)
    nodes = cluster_nodes()
    results = run_on_nodes(_facts_on_node, nodes, timeout=timeout)
    actors, actors_err = _actors_by_node()
    out = []
    for n in sorted(nodes, key=lambda x: (not x.is_head, not x.alive, x.ip)):
        r = results.get(n.node_id)
        facts, err = None, ""
        if isinstance(r, NodeFacts):
            facts = r
        elif isinstance(r, BaseException):
            err = exception_line(r)
        elif not n.alive:
            err = "node is dead"
        out.append(node_inventory(n, facts, err, actors.get(n.node_id, [])))
    return ClusterInventory(address=addr, taken_at=time.time(), nodes=out, actors_error=actors_err)
