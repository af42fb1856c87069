"""This node's GPUs through NVML (pynvml from `nvidia-ml-py`).

Imports only the standard library and pynvml so it runs on a GPU machine without Ray,
vLLM or pydantic: `python -m raylm.cluster.gpu` prints the inventory as JSON.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def nvml_inventory() -> dict[str, Any]:
    """Driver, CUDA driver API version and every GPU NVML sees.

    Returns a dict: {"available": bool, "error": str, "driver": str, "cuda_driver": str,
    "gpus": [{"index", "name", "uuid", "memory_total_bytes", "memory_used_bytes",
    "utilization_pct", "compute_capability", "pci_bus_id", "processes": [{"pid", "name",
    "memory_bytes"}]}]}. Never raises: a node without NVML reports available=False and why.
    """
    out: dict[str, Any] = {"available": False, "error": "", "driver": "", "cuda_driver": ""}
    out["gpus"] = []
    try:
        import pynvml
    except ImportError:
        out["error"] = "pynvml not installed (pip install nvidia-ml-py)"
        return out
    try:
        pynvml.nvmlInit()
    except Exception as e:
        out["error"] = f"NVML unavailable: {e}"
        return out
    try:
        out["available"] = True
        out["driver"] = _s(pynvml.nvmlSystemGetDriverVersion())
        try:
            v = int(pynvml.nvmlSystemGetCudaDriverVersion())
            out["cuda_driver"] = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:
            pass
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util: int | None = int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except Exception:
                util = None
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            out["gpus"].append(
                {
                    "index": i,
                    "name": _s(pynvml.nvmlDeviceGetName(h)),
                    "uuid": _s(pynvml.nvmlDeviceGetUUID(h)),
                    "memory_total_bytes": int(mem.total),
                    "memory_used_bytes": int(mem.used),
                    "utilization_pct": util,
                    "compute_capability": f"{major}.{minor}",
                    "pci_bus_id": _s(pynvml.nvmlDeviceGetPciInfo(h).busId),
                    "processes": _processes(pynvml, h),
                }
            )
    except Exception as e:
        out["error"] = f"NVML query failed: {e}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return out


def _processes(pynvml: Any, handle: Any) -> list[dict[str, Any]]:
    """The processes holding memory on a GPU (compute and graphics), with their names."""
    found: dict[int, int] = {}
    for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            for p in getattr(pynvml, query)(handle):
                used = getattr(p, "usedGpuMemory", None)
                found[int(p.pid)] = found.get(int(p.pid), 0) + (int(used) if used else 0)
        except Exception:
            continue
    return [
        {"pid": pid, "name": _proc_name(pid), "memory_bytes": mem} for pid, mem in found.items()
    ]


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"  # another PID namespace (a container) or gone


def main() -> int:
    json.dump(nvml_inventory(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
