"""Facts about this node, read locally (no Ray): CPU, memory, disk, /dev/shm, GPUs, versions."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster.container import in_container
from raylm.cluster.fingerprint import Fingerprint, local_fingerprint
from raylm.cluster.gpu import nvml_inventory
from raylm.cluster.netif import has_infiniband
from raylm.cluster.ray_process import RUN_MARKER
from raylm.home import models_dir


class GpuProcess(BaseModel):
    """A process holding memory on a GPU."""

    model_config = ConfigDict(extra="forbid")

    pid: int = Field(description="Its process id (as this node sees it).")
    name: str = Field(description="Its name ('?' when not visible from here).")
    memory_bytes: int = Field(description="GPU memory it holds (0 when NVML does not say).")
    raylm: bool = Field(
        default=False, description="Whether raylm started it on this node (a replica's engine)."
    )


class GpuInfo(BaseModel):
    """One GPU as NVML sees it."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="NVML device index.")
    name: str = Field(description="Model name, e.g. 'NVIDIA H200'.")
    uuid: str = Field(description="GPU UUID.")
    memory_total_bytes: int = Field(description="Total device memory.")
    memory_used_bytes: int = Field(description="Device memory in use now.")
    utilization_pct: int | None = Field(description="GPU utilization now, percent.")
    compute_capability: str = Field(description="CUDA compute capability, e.g. '9.0'.")
    pci_bus_id: str = Field(description="PCI bus id.")
    processes: list[GpuProcess] = Field(
        default_factory=list, description="Processes holding memory on it now."
    )


class NodeFacts(BaseModel):
    """What one node has, measured on that node."""

    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(description="Hostname.")
    cpus: int = Field(description="Logical CPUs of the machine.")
    memory_bytes: int = Field(description="Total memory.")
    memory_available_bytes: int = Field(description="Memory available now.")
    shm_bytes: int = Field(description="Size of /dev/shm (0 when missing).")
    model_store: str = Field(description="Path of this node's model store.")
    disk_free_bytes: int = Field(description="Free bytes on the model store's filesystem.")
    gpus: list[GpuInfo] = Field(description="GPUs NVML reports.")
    nvml_error: str = Field(description="Why NVML could not be read ('' when it could).")
    fingerprint: Fingerprint = Field(description="Software versions.")
    infiniband: bool = Field(
        default=False,
        description="Whether the node has an InfiniBand/RoCE device (/sys/class/infiniband).",
    )
    container: bool = Field(
        default=False, description="Whether the node runs in a container (raylm.cluster.container)."
    )
    time_unix: float = Field(description="This node's clock when the facts were taken.")
    pid: int = Field(description="Process that took the facts.")


def _existing_parent(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def shm_size(path: str = "/dev/shm") -> int:
    """Total size of the shared-memory filesystem (what NCCL and vLLM workers can use)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize


def _ours(pid: int) -> bool:
    run_id = os.environ.get(RUN_MARKER)
    try:
        return bool(run_id) and psutil.Process(pid).environ().get(RUN_MARKER) == run_id
    except (psutil.Error, OSError):
        return False


def _gpu(raw: dict[str, Any]) -> GpuInfo:
    procs = [GpuProcess(**p, raylm=_ours(int(p["pid"]))) for p in raw.get("processes", [])]
    return GpuInfo.model_validate({**raw, "processes": procs})


def local_node_facts() -> NodeFacts:
    """This node's CPU, memory, disk, /dev/shm, GPUs and versions."""
    inv = nvml_inventory()
    store = models_dir()
    free = psutil.disk_usage(str(_existing_parent(store))).free
    vm = psutil.virtual_memory()
    return NodeFacts(
        hostname=socket.gethostname(),
        cpus=psutil.cpu_count() or 1,
        memory_bytes=vm.total,
        memory_available_bytes=vm.available,
        shm_bytes=shm_size(),
        model_store=str(store),
        disk_free_bytes=free,
        gpus=[_gpu(g) for g in inv["gpus"]],
        nvml_error=str(inv["error"]),
        fingerprint=local_fingerprint(),
        infiniband=has_infiniband(),
        container=in_container(),
        time_unix=time.time(),
        pid=os.getpid(),
    )
