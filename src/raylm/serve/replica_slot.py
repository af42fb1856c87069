"""One replica as the controller holds it: its model, its ranks' supervisors, where they
run, its state and restart history; and what the controller does to all its ranks at once
(serve/controller.py)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup

from raylm.replica import ReplicaInfo, ReplicaState
from raylm.serve.deployment import DeploymentConfig


@dataclass
class Replica:
    index: int
    replica_id: str
    config: DeploymentConfig
    """The model it serves (one of the deployment's)."""
    state: ReplicaState = ReplicaState.PENDING
    detail: str = "not started"
    generation: int = 0
    restarts: int = 0
    failures: int = 0
    supervisors: list[Any] = field(default_factory=list)
    pg: PlacementGroup | None = None
    node_ids: list[str] = field(default_factory=list)
    node_ips: list[str] = field(default_factory=list)
    slots: list[tuple[str, int]] = field(default_factory=list)
    url: str = ""
    log_path: str = ""
    not_before: float = 0.0
    missed_status: int = 0
    ever_ready: bool = False
    """Whether it was ever ready (a rollout stops on a new replica that never is)."""
    retiring: bool = False
    """Removed by a scale-down: drained, stopped, then dropped (never restarted)."""
    task: asyncio.Task[None] | None = None
    retire_task: asyncio.Task[None] | None = None
    """Its drain and stop, once retiring (one per replica, however many ask)."""


def replica_info(r: Replica) -> ReplicaInfo:
    """What the gateway and `raylm ps` see of `r`."""
    return ReplicaInfo(
        replica_id=r.replica_id,
        model=r.config.served_model_name,
        url=r.url,
        node=r.node_ips[0] if r.node_ips else "",
        nodes=list(r.node_ips),
        state=r.state,
        max_model_len=r.config.max_model_len,
        restarts=r.restarts,
        detail=r.detail,
        log_path=r.log_path,
        model_path=r.config.model_path,
        generation=r.generation,
    )


def rank_need(c: DeploymentConfig) -> dict[str, float]:
    """What one rank of a replica of `c` holds on its node."""
    if c.device == "cuda":
        return {"GPU": float(c.gpus_per_node)}
    return {"CPU": float(c.cpus_per_node)}


def add_need(into: dict[str, dict[str, float]], node: str, need: dict[str, float]) -> None:
    """Count `need` (a rank's resources) as held on `node` in `into`."""
    held = into.setdefault(node, {})
    for k, v in need.items():
        held[k] = held.get(k, 0.0) + v


def call_all(actors: list[Any], method: str, timeout: float) -> list[Any]:
    """Call `method` on every actor and wait for all answers (in a worker thread)."""
    return list(ray.get([getattr(a, method).remote() for a in actors], timeout=timeout))


def stop_all(actors: list[Any]) -> None:
    """Stop every rank's vLLM (bounded), then end the supervisor actors."""
    refs = [a.stop.remote() for a in actors]
    with contextlib.suppress(ray.exceptions.RayError):
        ray.wait(refs, num_returns=len(refs), timeout=30.0)
    for a in actors:
        with contextlib.suppress(Exception):  # already gone with its node
            ray.kill(a, no_restart=True)


def need_text(c: DeploymentConfig) -> str:
    """What one replica of `c` holds, in words ("2 GPUs on each of 2 nodes")."""
    per = f"{c.gpus_per_node} GPU(s)" if c.device == "cuda" else f"{c.cpus_per_node} CPU core(s)"
    return per if c.nodes_per_replica == 1 else f"{per} on each of {c.nodes_per_replica} nodes"
