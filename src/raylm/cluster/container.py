"""Whether this node runs in a container, and what a container needs that a machine has:
the one reader of the marks Docker, Podman and Kubernetes leave."""

from __future__ import annotations

from pathlib import Path

SHM_FLAG = "--shm-size=16g (or --ipc=host)"
GPU_FLAGS = "--gpus all (Docker) or --device nvidia.com/gpu=all (Podman, CDI)"


def in_container() -> bool:
    """Whether this process runs in a container (Docker, Podman, Kubernetes)."""
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        cgroups = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(k in cgroups for k in ("docker", "libpod", "kubepods", "containerd"))
