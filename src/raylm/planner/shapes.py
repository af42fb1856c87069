"""Shapes and placement: which (TP, PP) pairs to try, whether the model can be split that
way at all, and how many replicas of a shape fit a group of alike nodes.

Placement here is about GPU counts only; whether a shape fits the memory of those GPUs is
`evaluate`'s question.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from raylm.models.facts import ModelFacts
from raylm.planner.cluster import ClusterSpec, NodeSpec
from raylm.planner.layout import Rejection


def check_layout(
    facts: ModelFacts, tensor_parallel_size: int, pipeline_parallel_size: int
) -> list[str]:
    """Reasons a (TP, PP) split cannot work for this model on any hardware; [] when fine."""
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    out: list[str] = []
    if tp < 1 or pp < 1:
        return [f"TP={tp}, PP={pp}: both must be at least 1"]
    if facts.num_attention_heads % tp:
        out.append(
            f"TP={tp}: {facts.num_attention_heads} attention heads are not divisible by {tp}"
        )
    kv = facts.num_kv_heads
    if not facts.kv_lora_rank and kv % tp and tp % kv:
        out.append(f"TP={tp}: {kv} KV heads are neither divisible by {tp} nor a divisor of it")
    if pp > facts.num_layers:
        out.append(f"PP={pp}: more pipeline stages than the model's {facts.num_layers} layers")
    return out


def shapes(cluster: ClusterSpec, facts: ModelFacts, allow_cross: bool) -> list[tuple[int, int]]:
    """Every (TP, PP) pair worth trying on `cluster`, in the order they are reported."""
    max_g = max((n.gpu_count for n in cluster.nodes), default=0)
    total = cluster.total_gpus
    out = []
    for tp in range(1, max_g + 1):
        for pp in range(1, min(total // tp, facts.num_layers + 1) + 1):
            out.append((tp, pp))
    # TP wider than a node: with permission, multiples of the node size (then PP too);
    # without, the usual guesses (powers of two) once, so their rejection is explained.
    wider = range(max_g + 1, total + 1)
    if allow_cross:
        out += [(t, p) for t in wider if t % max_g == 0 for p in range(1, total // t + 1)]
    else:
        out += [(t, 1) for t in wider if t & (t - 1) == 0]
    return out


class NodeGroup(BaseModel):
    """Nodes alike enough to share a replica (same `NodeSpec.kind_key`)."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[NodeSpec] = Field(min_length=1, description="The alike nodes, in cluster order.")

    @property
    def node(self) -> NodeSpec:
        """The group's first node, standing for all of them."""
        return self.nodes[0]


def node_groups(cluster: ClusterSpec) -> list[NodeGroup]:
    """The cluster's GPU nodes grouped by kind, in order of first appearance."""
    groups: dict[tuple[str, str, int, str | None], list[NodeSpec]] = {}
    for n in cluster.nodes:
        if n.gpu_count > 0:
            groups.setdefault(n.kind_key(), []).append(n)
    return [NodeGroup(nodes=g) for g in groups.values()]


class Placement(BaseModel):
    """Where the replicas of one (TP, PP) shape go in one node group."""

    model_config = ConfigDict(extra="forbid")

    nodes_per_replica: int = Field(description="Nodes one replica spans.")
    gpus_per_node: int = Field(description="GPUs a replica uses on each of its nodes.")
    tp_cross_node: bool = Field(description="Tensor parallel spans nodes (only when allowed).")
    replicas: int = Field(description="Replicas of the shape that fit the group.")
    nodes: list[str] = Field(description="Nodes the replicas use, in the order they fill.")
    warnings: list[str] = Field(description="Things the user should know about this placement.")


def _fill(group: NodeGroup, per_node: int, n_nodes: int) -> tuple[int, list[str]]:
    """How many replicas fit when each takes `per_node` GPUs on `n_nodes` distinct nodes."""
    slots = {n.name or f"node{i}": n.gpu_count // per_node for i, n in enumerate(group.nodes)}
    used: list[str] = []
    count = 0
    while True:
        best = sorted((k for k in slots if slots[k] > 0), key=lambda k: -slots[k])[:n_nodes]
        if len(best) < n_nodes:
            return count, used
        for k in best:
            slots[k] -= 1
            if k not in used:
                used.append(k)
        count += 1


def place(group: NodeGroup, tp: int, pp: int, *, allow_cross: bool) -> Placement | Rejection:
    """Spread each replica of (TP, PP) over the fewest nodes of `group` with the same whole
    number of stages on each, or say why the shape cannot be placed there."""
    node = group.node
    g_max = max(n.gpu_count for n in group.nodes)
    world = tp * pp
    warnings: list[str] = []
    # Smallest node count with the same whole number of stages on each node.
    n_nodes, per_node = 0, 0
    for n in range(1, world + 1):
        if world % n == 0 and world // n <= g_max and (pp % n == 0):
            n_nodes, per_node = n, world // n
            break
    tp_cross = False
    if not n_nodes and allow_cross and tp > g_max and tp % g_max == 0:
        n_nodes, per_node, tp_cross = world // g_max, g_max, True
        warnings.append(
            f"TP={tp} spans {tp // g_max} nodes: every layer all-reduces across the network; "
            "this needs InfiniBand/RoCE"
            + ("" if node.infiniband else " and these nodes report none")
        )
    if not n_nodes:
        if tp > g_max:
            why = (
                f"TP={tp}: tensor parallel must stay inside a node and the largest node "
                f"has {g_max} GPUs (allow cross-node TP only with InfiniBand)"
            )
        else:
            why = (
                f"TP={tp}, PP={pp}: {world} GPUs cannot be split into equal whole stages "
                f"on nodes of {g_max} GPUs"
            )
        return Rejection(tensor_parallel_size=tp, pipeline_parallel_size=pp, reason=why)
    count, used = _fill(group, per_node, n_nodes)
    if count == 0:
        return Rejection(
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            reason=f"TP={tp}, PP={pp}: equal whole stages need {n_nodes} nodes with "
            f"{per_node} GPU(s) each; the cluster has {len(group.nodes)} node(s) of this kind",
        )
    return Placement(
        nodes_per_replica=n_nodes,
        gpus_per_node=per_node,
        tp_cross_node=tp_cross,
        replicas=count,
        nodes=used,
        warnings=warnings,
    )
