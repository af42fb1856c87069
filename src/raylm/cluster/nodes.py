"""The attached cluster's nodes as Ray's GCS lists them: the one reader of `ray.nodes()`.

Serve's placement, the controller's node picking, model sync, status and doctor all see
the same typed `NodeView`, with a restarted node's dead record already dropped.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
