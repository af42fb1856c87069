"""The RayCluster of a rendered deployment: one head and one worker group per GPU kind,
sized from the planner's layout (the machines it uses, the GPUs it takes on each)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from raylm.k8s import pods
from raylm.k8s.options import K8sOptions
from raylm.planner import ClusterSpec, Layout, NodeSpec

OVERWRITE_CMD = "ray.io/overwrite-container-cmd"


@dataclass(frozen=True)
class PodGroup:
    """Machines of one GPU kind that the layout uses, as pods of one shape."""

    gpu_name: str
    gpus: int
    pods: int

    @property
    def group_name(self) -> str:
        """A DNS label naming the kind, e.g. 'l20-x4' for 'NVIDIA L20' x 4."""
        kind = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower().removeprefix("nvidia ")).strip("-")
        return f"{kind[:40]}-x{self.gpus}"


def pod_groups(layout: Layout, cluster: ClusterSpec) -> list[PodGroup]:
    """The layout's machines grouped by GPU kind, in the cluster's order; each pod asks
    for the GPUs the layout uses on its machine (all of them when replicas fill it)."""
    by_name = {n.name: n for n in cluster.nodes}
    used: list[NodeSpec] = [by_name[name] for name in layout.nodes if name in by_name]
    per_node = math.ceil(layout.replicas * layout.gpus_per_replica / max(1, len(used)))
    groups: dict[tuple[str, int], int] = {}
    for node in used:
        key = (node.gpu_name, min(node.gpu_count, per_node))
        groups[key] = groups.get(key, 0) + 1
    return [PodGroup(name, gpus, count) for (name, gpus), count in groups.items()]


def ray_version() -> str:
    """The Ray raylm runs with: KubeRay checks token auth against it (>= 2.52)."""
    return version("ray")


def raycluster(
    opts: K8sOptions,
    groups: list[PodGroup],
    serve_argv: list[str],
    model: str,
    serve_file: bool,
) -> dict[str, Any]:
    """The RayCluster: the head on the first machine of the first group (it serves too,
    as in seed 004), the rest as worker groups; token auth on, its Secret made by KubeRay."""
    mixed = len({g.gpu_name for g in groups}) > 1
    pull = pods.model_init(opts, model)
    # A shared claim is filled once, by the head; each machine's own directory by its pod.
    worker_init = [pull] if opts.store.kind == "hostpath" else []
    head = groups[0]
    head_template = pods.head_template(
        opts,
        serve_argv,
        sum(g.pods for g in groups),
        head.gpus,
        head.gpu_name if mixed else None,
        [pull],
        serve_file,
    )
    workers = []
    for i, g in enumerate(groups):
        count = g.pods - 1 if i == 0 else g.pods
        if count <= 0:
            continue
        workers.append(
            {
                "groupName": g.group_name,
                "replicas": count,
                "minReplicas": count,
                "maxReplicas": count,
                "rayStartParams": {},
                "template": pods.worker_template(
                    opts, g.gpus, g.gpu_name if mixed else None, worker_init
                ),
            }
        )
    spec: dict[str, Any] = {
        "rayVersion": ray_version(),
        "authOptions": {"mode": "token"},
        "headGroupSpec": {"rayStartParams": {}, "template": head_template},
    }
    if workers:
        spec["workerGroupSpecs"] = workers
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": opts.name,
            "namespace": opts.namespace,
            "labels": {"app.kubernetes.io/name": "raylm", "app.kubernetes.io/instance": opts.name},
            "annotations": {OVERWRITE_CMD: "true"},
        },
        "spec": spec,
    }
