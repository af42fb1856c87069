"""The hardware a plan is made for: a live cluster's inventory or a written description.

Written forms (`--cluster`):
- `2x4xL20`: 2 nodes x 4 GPUs x a GPU from the built-in table (`gpus.json`);
- `1x8x80GB` (or `80GiB`): memory given directly, the GPU otherwise unknown;
- `2x4xL20+ib`: the nodes have InfiniBand (cross-node tensor parallel becomes an option);
- several groups joined by commas: `1x8xH100,2x4xL20`;
- a `.json` or `.toml` file: `{"nodes": [{"count": 2, "gpus": 4, "gpu": "L20"}]}`, a full
  ClusterSpec, or the output of `raylm status --json` (see `cluster_from_inventory`).
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raylm.cluster.inventory import ClusterInventory
from raylm.errors import ConfigError
from raylm.units import GIB

_GROUP_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*([^,+]+?)\s*(\+\s*ib)?\s*$", re.IGNORECASE)
_MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(gb|gib|g)$", re.IGNORECASE)


class GpuType(BaseModel):
    """One row of the built-in GPU table (vendor datasheet figures)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name as NVML reports it, e.g. 'NVIDIA L20'.")
    memory_gb: float = Field(description="Memory as sold, taken as GiB.")
    compute_capability: str = Field(description="CUDA compute capability, e.g. '8.9'.")
    bandwidth_gbps: float = Field(description="Memory bandwidth in GB/s.")
    bf16: bool = Field(description="True when the GPU computes in bfloat16 (cc >= 8.0).")
    nvlink: bool = Field(description="True for SXM parts with NVLink between GPUs of a node.")


class NodeSpec(BaseModel):
    """One node: its accelerators (all alike) and how it reaches other nodes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", description="Node name or IP, for messages.")
    accelerator: Literal["gpu", "cpu"] = Field(
        default="gpu",
        description="'gpu', or 'cpu' for a node without GPUs (vLLM's CPU backend: one device "
        "whose memory is the node's RAM).",
    )
    gpu_count: int = Field(ge=0, description="GPUs on the node (1 for a CPU node).")
    gpu_name: str = Field(description="GPU model, e.g. 'NVIDIA L20'; 'cpu' for a CPU node.")
    gpu_memory_bytes: int = Field(gt=0, description="Memory of one GPU in bytes.")
    compute_capability: str | None = Field(
        default=None, description="CUDA compute capability ('8.9'); None when unknown or CPU."
    )
    bandwidth_gbps: float | None = Field(
        default=None, description="Memory bandwidth in GB/s, for throughput estimates."
    )
    nvlink: bool = Field(default=False, description="GPUs of the node are linked by NVLink.")
    infiniband: bool = Field(
        default=False, description="The node has InfiniBand/RoCE to the other nodes."
    )
    gpu_memory_free_bytes: int | None = Field(
        default=None,
        description="Free memory of the node's fullest GPU when the inventory was taken "
        "(live clusters only); vLLM refuses to start when its share is not free.",
    )

    def kind_key(self) -> tuple[str, str, int, str | None]:
        """Nodes with equal keys can host parts of the same replica."""
        return (self.accelerator, self.gpu_name, self.gpu_memory_bytes, self.compute_capability)

    @property
    def bf16(self) -> bool:
        """True when bfloat16 works; unknown GPUs are assumed modern (cc >= 8.0)."""
        if self.accelerator == "cpu":
            return False
        if self.compute_capability is None:
            return True
        return float(self.compute_capability) >= 8.0


class ClusterSpec(BaseModel):
    """The nodes a plan may use."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[NodeSpec] = Field(description="Every node, in order.")
    description: str = Field(default="", description="What the user wrote, for messages.")

    @property
    def total_gpus(self) -> int:
        return sum(n.gpu_count for n in self.nodes)

    def summary(self) -> str:
        """A short human form like '2 nodes x 4 NVIDIA L20 (48 GiB)'."""
        groups: dict[tuple[str, int, int], int] = {}
        for n in self.nodes:
            k = (n.gpu_name, n.gpu_count, n.gpu_memory_bytes)
            groups[k] = groups.get(k, 0) + 1
        parts = [
            f"{c} node{'s' if c > 1 else ''} x {g} {name} ({mem / GIB:.0f} GiB)"
            for (name, g, mem), c in groups.items()
        ]
        return ", ".join(parts) or "no nodes"


@cache
def gpu_table() -> tuple[GpuType, ...]:
    """The built-in GPU table shipped as package data."""
    text = resources.files("raylm.planner").joinpath("gpus.json").read_text()
    return tuple(GpuType(**g) for g in json.loads(text)["gpus"])


def _tokens(name: str) -> set[str]:
    parts = [p for p in re.split(r"[\s_\-/]+", name.lower()) if p]
    toks = set(parts)
    toks.update(a + b for a, b in itertools.pairwise(parts))
    return toks - {"nvidia", "tesla", "geforce"}


def find_gpu(name: str) -> GpuType | None:
    """The table row for a GPU name as typed ('L20', 'h100', 'NVIDIA A100-SXM4-80GB')."""
    want = name.strip().lower()
    table = gpu_table()
    for g in table:
        if g.name.lower() == want:
            return g
    wt = _tokens(want)
    hits = [g for g in table if wt and wt <= _tokens(g.name)]
    return hits[0] if len(hits) == 1 else None


def _node_from_gpu(
    name: str,
    count: int,
    *,
    memory_bytes: int | None = None,
    infiniband: bool = False,
    node: str = "",
) -> NodeSpec:
    g = find_gpu(name)
    if g is None and memory_bytes is None:
        known = ", ".join(t.name for t in gpu_table())
        raise ConfigError(
            f"Unknown GPU {name!r}",
            why=f"the built-in table knows: {known}",
            fix="write the memory instead (e.g. 1x8x80GB) or describe the nodes in a JSON file",
        )
    return NodeSpec(
        name=node,
        gpu_count=count,
        gpu_name=g.name if g else name,
        gpu_memory_bytes=memory_bytes or int((g.memory_gb if g else 0) * GIB),
        compute_capability=g.compute_capability if g else None,
        bandwidth_gbps=g.bandwidth_gbps if g else None,
        nvlink=g.nvlink if g else False,
        infiniband=infiniband,
    )


def _parse_group(text: str) -> list[NodeSpec]:
    m = _GROUP_RE.match(text)
    if not m:
        raise ConfigError(
            f"Cannot read cluster description {text!r}",
            why="expected NODESxGPUSxGPU such as 2x4xL20, 1x8x80GB or 2x8xH100+ib",
            fix="use that form, a JSON/TOML file, or --cluster live on a running cluster",
        )
    nodes, gpus, what, ib = int(m[1]), int(m[2]), m[3], bool(m[4])
    if nodes < 1 or gpus < 1:
        raise ConfigError(
            f"Cluster description {text!r} has no GPUs", fix="use counts of 1 or more"
        )
    mem = _MEM_RE.match(what.strip())
    if mem:
        mb = int(float(mem[1]) * GIB)
        return [
            NodeSpec(
                name=f"node{i}",
                gpu_count=gpus,
                gpu_name=f"{mem[1]}GB GPU",
                gpu_memory_bytes=mb,
                infiniband=ib,
            )
            for i in range(nodes)
        ]
    return [_node_from_gpu(what, gpus, infiniband=ib, node=f"node{i}") for i in range(nodes)]


def _nodes_from_dict(d: dict[str, Any]) -> ClusterSpec:
    if "nodes" in d and any(
        isinstance(n, dict) and "gpus" in n and isinstance(n["gpus"], list) for n in d["nodes"]
    ):
        try:
            inventory = ClusterInventory.model_validate(d)
        except ValidationError as e:
            raise ConfigError(
                "The cluster file looks like `raylm status --json` output but is not complete",
                why=str(e).splitlines()[0]
                + ": "
                + "; ".join(
                    f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
                    for err in e.errors()[:3]
                ),
                fix="save it again from the cluster, or describe the cluster as e.g. 2x4xL20",
                command="raylm status --json > cluster.json",
            ) from None
        return cluster_from_inventory(inventory)
    try:
        return ClusterSpec(**d)
    except (ValidationError, TypeError):
        pass
    nodes: list[NodeSpec] = []
    for i, n in enumerate(d.get("nodes") or []):
        if not isinstance(n, dict) or "gpus" not in n or not ("gpu" in n or "memory_gb" in n):
            raise ConfigError(
                f"Cluster file node #{i + 1} is not understood",
                why='each node needs "gpus" (a count) and "gpu" (a name) or "memory_gb"',
                fix='write e.g. {"nodes": [{"count": 2, "gpus": 4, "gpu": "L20"}]}',
            )
        mem = int(float(n["memory_gb"]) * GIB) if "memory_gb" in n else None
        for j in range(int(n.get("count", 1))):
            spec = _node_from_gpu(
                str(n.get("gpu") or f"{n['memory_gb']}GB GPU"),
                int(n["gpus"]),
                memory_bytes=mem,
                infiniband=bool(n.get("infiniband", False)),
                node=str(n.get("name") or f"node{len(nodes) + j}"),
            )
            nodes.append(spec)
    if not nodes:
        raise ConfigError("The cluster file describes no nodes", fix='add a "nodes" list')
    return ClusterSpec(nodes=nodes)


def parse_cluster_spec(spec: str | Path) -> ClusterSpec:
    """A ClusterSpec from `2x4xL20`, `1x8x80GB`, `A,B` groups, or a .json/.toml file."""
    text = str(spec).strip()
    p = Path(text).expanduser()
    if p.suffix.lower() in (".json", ".toml") or p.is_file():
        try:
            raw = p.read_text()
            data = tomllib.loads(raw) if p.suffix.lower() == ".toml" else json.loads(raw)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"Cannot read cluster file {p}",
                why=str(e),
                fix="give an existing JSON or TOML file",
            ) from e
        if isinstance(data, list):
            data = {"nodes": data}
        if not isinstance(data, dict):
            raise ConfigError(f"Cluster file {p} is not an object with a nodes list")
        out = _nodes_from_dict(data)
        return out.model_copy(update={"description": out.description or str(p)})
    nodes = [n for part in text.split(",") for n in _parse_group(part)]
    for i, n in enumerate(nodes):
        n.name = f"node{i}"
    return ClusterSpec(nodes=nodes, description=text)


def cluster_from_inventory(inventory: ClusterInventory) -> ClusterSpec:
    """A ClusterSpec from the live inventory (`raylm status --json`): each alive node with
    its GPUs as NVML reports them (the GPU table fills in what NVML lacks); a node without
    GPUs becomes a CPU node, one device whose memory is the node's."""
    if not inventory.nodes:
        raise ConfigError(
            "The cluster inventory lists no nodes",
            fix="start the cluster first or describe it with --cluster 2x4xL20",
            command="raylm status",
        )
    nodes: list[NodeSpec] = []
    for n in inventory.nodes:
        if not n.alive:
            continue  # a dead node cannot host a replica
        if not n.gpus:
            if n.memory_bytes <= 0:
                raise ConfigError(f"Inventory node {n.ip} reports neither GPUs nor memory_bytes")
            nodes.append(
                NodeSpec(
                    name=n.ip,
                    accelerator="cpu",
                    gpu_count=1,
                    gpu_name="cpu",
                    gpu_memory_bytes=n.memory_bytes,
                    infiniband=n.infiniband,
                )
            )
            continue
        first = n.gpus[0]
        mem = min(g.memory_total_bytes for g in n.gpus)
        row = find_gpu(first.name)
        if mem <= 0:
            if row is None:
                raise ConfigError(f"Inventory node {n.ip}: GPU {first.name!r} reports no memory")
            mem = int(row.memory_gb * GIB)
        cc = first.compute_capability or (row.compute_capability if row else None)
        nodes.append(
            NodeSpec(
                name=n.ip,
                gpu_count=len(n.gpus),
                gpu_name=first.name,
                gpu_memory_bytes=mem,
                compute_capability=cc,
                bandwidth_gbps=row.bandwidth_gbps if row else None,
                nvlink=row.nvlink if row else False,
                infiniband=n.infiniband,
                gpu_memory_free_bytes=mem - max(g.memory_used_bytes for g in n.gpus),
            )
        )
    if not nodes:
        raise ConfigError(
            "No node of the cluster inventory is alive",
            fix="check the nodes",
            command="raylm status",
        )
    return ClusterSpec(nodes=nodes, description="live")
