"""The attached cluster's nodes as Ray's GCS lists them: the one reader of `ray.nodes()`.

Serve's placement, the controller's node picking, model sync, status and doctor all see
the same typed `NodeView`, with a restarted node's dead record already dropped.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ClusterError

# Ray marks the head node with this resource.
_HEAD_RESOURCE = "node:__internal_head__"


class NodeView(BaseModel):
    """One node of the cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(description="Ray node id (hex).")
    ip: str = Field(description="The node's address in the cluster (Ray's NodeManagerAddress).")
    alive: bool = Field(description="Whether the GCS sees it alive.")
    is_head: bool = Field(description="Whether it is the head node.")
    resources: dict[str, float] = Field(description="Ray resources it advertises (totals).")

    @property
    def cpus(self) -> int:
        return int(self.resources.get("CPU", 0))

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))


def node_views(records: list[dict[str, object]]) -> list[NodeView]:
    """`ray.nodes()` records as views; a node that restarted keeps only its alive record."""
    out = []
    for n in records:
        raw = n.get("Resources") or {}
        res = {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        out.append(
            NodeView(
                node_id=str(n["NodeID"]),
                ip=str(n["NodeManagerAddress"]),
                alive=bool(n["Alive"]),
                is_head=_HEAD_RESOURCE in res,
                resources=res,
            )
        )
    alive_ips = {n.ip for n in out if n.alive}
    return [n for n in out if n.alive or n.ip not in alive_ips]


def cluster_nodes() -> list[NodeView]:
    """Every node the GCS knows, alive or dead (Ray must be initialised)."""
    # Function-local: Ray reads its auth settings at import.
    import ray

    return node_views(ray.nodes())


def alive_nodes() -> list[NodeView]:
    """The alive nodes (Ray must be initialised)."""
    return [n for n in cluster_nodes() if n.alive]


def wait_for_nodes(count: int, timeout_s: float, poll_s: float = 2.0) -> list[NodeView]:
    """The alive nodes once there are at least `count` (Ray must be initialised), for a
    head that must not plan before its workers joined (a rendered Kubernetes head, a
    script); ClusterError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := alive_nodes()) < count:
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"Only {len(nodes)} of {count} node(s) joined the cluster in {timeout_s:.0f} s",
                why="the other machines (or pods) have not run their join line, or cannot "
                "reach the head",
                fix="Check the missing machines' logs, then wait again",
                command=f"raylm status --wait-nodes {count}",
            )
        time.sleep(poll_s)
    return nodes
