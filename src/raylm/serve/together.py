"""Several models of one deployment planned together (`[[models]]` in raylm.toml).

Each model is planned as a single one would be (serve/planning.py), in the file's order,
on what the models before it leave: on GPU nodes the planner sees only the GPUs still
free; on CPU nodes the cores are shared evenly between all the replicas whose
`cpus_per_replica` is not given. A set that does not fit is refused before anything
loads, saying which model gets what. All the models share one controller, one replica
key and one gateway (serve/runner.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raylm.cluster.nodes import NodeView, alive_nodes
from raylm.config import ServeSpec
from raylm.errors import PlanError
from raylm.serve.deployment import DeploymentConfig
from raylm.serve.placement import Placement
from raylm.serve.planning import Held, plan_deployment

if TYPE_CHECKING:
    from raylm.models.store import ModelEntry
    from raylm.serve.runner import Reporter

Planned = list[tuple[DeploymentConfig, Placement]]


def plan_together(
    specs: list[ServeSpec], entries: list[ModelEntry], local: bool, reporter: Reporter
) -> Planned:
    """Each model's deployment and placement, all fitting on the live cluster at once."""
    if len(specs) == 1:
        return [plan_deployment(specs[0], entries[0], local, reporter)]
    nodes = alive_nodes()
    specs = share_cores(specs, nodes)
    held: Held = {}
    planned: Planned = []
    for spec, entry in zip(specs, entries, strict=True):
        name = spec.served_model_name or entry.name
        reporter.phase(f"planning {name}")
        try:
            config, layout = plan_deployment(spec, entry, local, reporter, held)
        except PlanError as e:
            raise _not_together(e, name, len(specs), planned) from None
        take(held, config, layout, nodes)
        planned.append((config, layout))
    # One deployment: the gateway presents one key to every replica.
    key = planned[0][0].replica_api_key
    return [(c.model_copy(update={"replica_api_key": key}), p) for c, p in planned]


def share_cores(specs: list[ServeSpec], nodes: list[NodeView]) -> list[ServeSpec]:
    """On CPU nodes, give each replica that names no `cpus_per_replica` an even share of
    the cores (one model alone would take a whole node per replica)."""
    if not nodes or any(n.gpus for n in nodes):
        return specs
    replicas = sum(s.autoscaling.max_replicas if s.autoscaling else s.replicas or 1 for s in specs)
    share = max(1, max(n.cpus for n in nodes) // math.ceil(replicas / len(nodes)))
    return [
        s
        if s.cpus_per_replica is not None
        else s.model_copy(update={"cpus_per_replica": max(s.tensor_parallel_size or 1, share)})
        for s in specs
    ]


def take(held: Held, config: DeploymentConfig, layout: Placement, nodes: list[NodeView]) -> None:
    """Add to `held` what `config`'s ranks will hold, each on the node with the most room
    left (as the controller places them: raylm.serve.placement.pick_node)."""
    cuda = layout.device == "cuda"
    kind, need = ("GPU", layout.gpus_per_node) if cuda else ("CPU", layout.cpus_per_node)
    allowed = config.allowed_node_ips
    usable = [n for n in nodes if allowed is None or n.ip in allowed]
    # An autoscaled model holds room for its most replicas (it was planned for them).
    most = config.autoscaling.max_replicas if config.autoscaling else layout.replicas
    for _ in range(most * layout.nodes_per_replica):
        room = {
            n.ip: n.resources.get(kind, 0.0) - held.get(n.ip, {}).get(kind, 0.0) for n in usable
        }
        ip = max(room, key=lambda i: room[i], default=None)
        if ip is None:
            return
        mine = held.setdefault(ip, {})
        mine[kind] = mine.get(kind, 0.0) + need


def _not_together(e: PlanError, model: str, count: int, planned: Planned) -> PlanError:
    before = "; ".join(f"{c.served_model_name}: {p.describe()}" for c, p in planned)
    return PlanError(
        f"The {count} models do not fit together on this cluster: {model} has no room",
        why=f"{e.what}"
        + (f" ({e.why})" if e.why else "")
        + (f"; the models before it take {before}" if before else ""),
        fix="Lower the replicas, TP or cpus_per_replica of a model in the spec file, serve "
        "fewer models, or add nodes",
        command="raylm status",
    )
