"""What a layout takes of each node: the GPUs its replicas use there, placed the way the
planner counted them (each replica on `nodes_per_replica` distinct nodes, the node with the
most room first), so a pod or a machine can be sized to exactly that."""

from __future__ import annotations

from raylm.planner.cluster import ClusterSpec
from raylm.planner.layout import Layout


def gpus_by_node(layout: Layout, cluster: ClusterSpec) -> dict[str, int]:
    """{node name: GPUs the layout's replicas use there}, in the cluster's order, only the
    nodes used; ValueError when the replicas do not fit the layout's own nodes."""
    per = layout.gpus_per_node
    mine = set(layout.nodes)
    room = {n.name: n.gpu_count // per for n in cluster.nodes if n.name in mine}
    used = dict.fromkeys(room, 0)
    for _ in range(layout.replicas):
        best = sorted((k for k in room if room[k] > 0), key=lambda k: -room[k])
        best = best[: layout.nodes_per_replica]
        if len(best) < layout.nodes_per_replica:
            raise ValueError(f"{layout.shape()} does not fit the nodes {sorted(mine)}")
        for k in best:
            room[k] -= 1
            used[k] += per
    return {k: v for k, v in used.items() if v}
