"""Turn a serve spec and the live cluster's nodes into the controller's deployment layout.

On GPU clusters the planner decides TP/PP/replicas and the nodes (one GPU kind), and
`place_plan` places exactly that: the layout `raylm serve` printed is the one it runs. Without
a plan (CPU nodes), `fit_placement` fits the user's flags onto the nodes Ray reports. Both
refuse, before anything loads, a layout that cannot be placed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raylm.cluster.nodes import NodeView
from raylm.errors import PlanError
from raylm.planner.layout import Layout


@dataclass(frozen=True)
class Placement:
    """How the replicas map onto nodes and devices (what the controller places)."""

    device: str
    replicas: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    nodes_per_replica: int
    cpus_per_node: int
    gpus_per_node: int

    def describe(self) -> str:
        per = (
            f"{self.gpus_per_node} GPU(s)"
            if self.device == "cuda"
            else f"{self.cpus_per_node} core(s)"
        )
        return (
            f"{self.replicas} replica(s) x TP={self.tensor_parallel_size} "
            f"PP={self.pipeline_parallel_size}, {self.nodes_per_replica} node(s) per replica, "
            f"{per} per node"
        )


def fit_placement(
    nodes: list[NodeView],
    *,
    replicas: int,
    tensor_parallel_size: int,
    pipeline_parallel_size: int,
    cpus_per_replica: int | None = None,
) -> Placement:
    """Fit replicas x TP x PP onto `nodes`; raise PlanError saying why when it cannot fit."""
    if not nodes:
        raise PlanError("The Ray cluster has no alive node", fix="Start one", command="raylm up")
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    world = tp * pp
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    if gpu_nodes:
        per_node = min(n.gpus for n in gpu_nodes)
        if world <= per_node:
            span, per = 1, world
        elif world % per_node == 0:
            span, per = world // per_node, per_node
        else:
            raise PlanError(
                f"TP={tp} x PP={pp} = {world} GPUs cannot be split evenly over nodes "
                f"of {per_node} GPUs",
                fix="Choose TP x PP as a multiple of the GPUs per node, or at most one node's GPUs",
            )
        total = sum(n.gpus // per for n in gpu_nodes)
        if replicas * span > total:
            raise PlanError(
                f"{replicas} replica(s) of {span} node(s) x {per} GPU(s) do not fit",
                why=f"the cluster has {len(gpu_nodes)} GPU node(s) with {per_node}+ GPUs each",
                fix="Lower --replicas or --tp/--pp, or add nodes",
                command="raylm status",
            )
        return Placement("cuda", replicas, tp, pp, span, 0, per)
    if pp > 1:
        raise PlanError(
            f"PP={pp} is not supported on CPU nodes",
            why="pipeline parallel crashed in vLLM's CPU build (0.32) when measured here",
            fix="Use --tp to split the model, or --replicas for throughput",
        )
    max_cpus = max(n.cpus for n in nodes)
    if tp <= max_cpus:
        span = 1
        share = max_cpus // max(1, math.ceil(replicas / len(nodes)))
        per = cpus_per_replica or max(tp, share)
    else:
        span = next((k for k in range(2, tp + 1) if tp % k == 0 and tp // k <= max_cpus), 0)
        if not span or span > len(nodes):
            raise PlanError(
                f"TP={tp} needs {tp} cores; no node has that many and it cannot be split "
                f"over the {len(nodes)} node(s) of {max_cpus} core(s)",
                fix="Lower --tp or add nodes",
                command="raylm status",
            )
        per = tp // span
    slots = sum(n.cpus // per for n in nodes if n.cpus >= per)
    if replicas * span > slots:
        raise PlanError(
            f"{replicas} replica(s) x {span} node(s) x {per} core(s) do not fit on this cluster",
            why=f"it has {len(nodes)} node(s) with {', '.join(str(n.cpus) for n in nodes)} cores",
            fix="Lower --replicas, --tp or --cpus-per-replica, or add nodes",
            command="raylm status",
        )
    return Placement("cpu", replicas, tp, pp, span, per, 0)


def place_plan(nodes: list[NodeView], layout: Layout) -> Placement:
    """The planner's GPU layout on the nodes it chose; refuse when some of those nodes are
    gone (or not eligible) and the rest cannot hold every replica."""
    planned = [n for n in nodes if n.ip in layout.nodes and n.gpus >= layout.gpus_per_node]
    slots = sum(n.gpus // layout.gpus_per_node for n in planned)
    need = layout.replicas * layout.nodes_per_replica
    if slots < need:
        missing = sorted(set(layout.nodes) - {n.ip for n in planned})
        raise PlanError(
            f"The plan ({layout.shape()}) cannot be placed",
            why=f"it needs {need} node slot(s) of {layout.gpus_per_node} GPU(s) on "
            f"{', '.join(layout.nodes)}; "
            + (f"not usable now: {', '.join(missing)}" if missing else f"only {slots} are free"),
            fix="Bring those nodes back, or give --replicas/--tp/--pp that fit the rest",
            command="raylm status",
        )
    return Placement(
        "cuda",
        layout.replicas,
        layout.tensor_parallel_size,
        layout.pipeline_parallel_size,
        layout.nodes_per_replica,
        0,
        layout.gpus_per_node,
    )


def pick_node(
    nodes: list[NodeView],
    need: dict[str, float],
    placed: list[list[str]],
    *,
    exclude: set[str],
    allowed: list[str] | None,
    used: dict[str, dict[str, float]] | None = None,
) -> str | None:
    """The node (id) for one more rank: it has room for `need` beyond the ranks already
    `placed` there (each replica's node ids, all of this model) and what other models'
    ranks hold there (`used`, per node id), and of those the fewest of this model's
    ranks (replicas spread), then the most room left. None when no node has room."""
    ours: dict[str, int] = {}
    for node_ids in placed:
        for nid in node_ids:
            ours[nid] = ours.get(nid, 0) + 1
    used = used or {}
    best: tuple[int, float, str] | None = None
    for node in nodes:
        nid = node.node_id
        if nid in exclude or (allowed is not None and node.ip not in allowed):
            continue
        held = used.get(nid, {})
        room = min(
            node.resources.get(k, 0.0) - held.get(k, 0.0) - ours.get(nid, 0) * v - v
            for k, v in need.items()
        )
        if room < 0:
            continue
        key = (ours.get(nid, 0), -room, nid)
        if best is None or key < best:
            best = key
    return best[2] if best else None
