"""The RayCluster of a rendered deployment: one head and one worker group per GPU kind,
sized from the planner's layout (the machines it uses, the GPUs it takes on each)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from raylm.errors import ConfigError
from raylm.k8s import pods
from raylm.k8s.options import K8sOptions
from raylm.planner import ClusterSpec, Layout, find_gpu, gpus_by_node

OVERWRITE_CMD = "ray.io/overwrite-container-cmd"
PRODUCT_LABEL = "nvidia.com/gpu.product"


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
    """The machines the layout uses, grouped by GPU kind and by the GPUs it takes on each
    (a pod asks for those, not for the whole machine), in the cluster's order."""
    kinds = {n.name: n.gpu_name for n in cluster.nodes}
    groups: dict[tuple[str, int], int] = {}
    for name, gpus in gpus_by_node(layout, cluster).items():
        key = (kinds[name], gpus)
        groups[key] = groups.get(key, 0) + 1
    return [PodGroup(name, gpus, count) for (name, gpus), count in groups.items()]


def ray_version() -> str:
    """The Ray raylm runs with: KubeRay checks token auth against it (>= 2.52)."""
    return version("ray")


def _selectors(opts: K8sOptions, groups: list[PodGroup]) -> list[dict[str, str]]:
    """Each group's nodeSelector: the user's, and with several GPU kinds the product label
    of NVIDIA's GPU feature discovery (the GPU's name, '-' for spaces), so each group's
    pods land on machines of its kind."""
    if len({g.gpu_name for g in groups}) == 1:
        return [dict(opts.node_selector) for _ in groups]
    out = []
    for g in groups:
        row = find_gpu(g.gpu_name)
        if row is None or row.name != g.gpu_name:
            raise ConfigError(
                f"The plan uses several GPU kinds, and '{g.gpu_name}' names none the pods "
                "could be placed by",
                why="each worker group selects its machines by NVIDIA's gpu.product label, "
                "which is the GPU's name",
                fix="Name the GPUs in --cluster (e.g. '1x8xH100, 2x4xL20')",
            )
        out.append({**opts.node_selector, PRODUCT_LABEL: g.gpu_name.replace(" ", "-")})
    return out


def raycluster(
    opts: K8sOptions,
    groups: list[PodGroup],
    serve_argv: list[str],
    model: str,
    serve_file: bool,
    drain_s: float,
) -> dict[str, Any]:
    """The RayCluster: the head on the first machine of the first group (it serves too,
    as in seed 004), the rest as worker groups; token auth on, its Secret made by KubeRay."""
    selectors = _selectors(opts, groups)
    pull = pods.model_init(opts, model)
    # A shared claim is filled once, by the head; each machine's own directory by its pod.
    worker_init = [pull] if opts.store.kind == "hostpath" else []
    head = groups[0]
    head_template = pods.head_template(
        opts,
        serve_argv,
        sum(g.pods for g in groups),
        head.gpus,
        selectors[0],
        [pull],
        serve_file,
        drain_s,
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
                "template": pods.worker_template(opts, g.gpus, selectors[i], worker_init),
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
