"""Run a function on every alive node of the attached cluster (a Ray task pinned there).

NVML, /dev/shm and interfaces can only be read on the node itself, so status and doctor
send one small task per node with NodeAffinitySchedulingStrategy(soft=False).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from raylm.cluster.nodes import NodeView

log = logging.getLogger(__name__)


def run_on_nodes(
    fn: Callable[..., Any],
    nodes: list[NodeView],
    *args: Any,
    timeout: float = 120,
    per_node_args: dict[str, tuple[Any, ...]] | None = None,
    num_gpus: float = 0,
) -> dict[str, Any]:
    """Run fn(*args) once on each alive node; return {node_id: result or Exception}.

    `num_gpus`: GPUs the task holds there (Ray shows a task only the GPUs it was given).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, num_gpus=num_gpus, max_retries=0)(fn)
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
