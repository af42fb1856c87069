"""A real all-reduce through torch.distributed: bandwidth and the transport NCCL chose.

Imports only the standard library (torch inside the functions), so it runs on a GPU
machine without Ray or vLLM::

    python -m raylm.cluster.nccl_probe            # all local GPUs, NCCL
    python -m raylm.cluster.nccl_probe --backend gloo --nprocs 2   # CPU, no GPU needed

`raylm doctor --nccl` calls `run_rank` from one Ray task per node for the between-nodes
test. NCCL_DEBUG=INFO output is parsed for the transport: "NET/IB" (InfiniBand/RoCE),
"NET/Socket" (TCP), "P2P" (NVLink/PCIe peer-to-peer), "SHM" (host shared memory).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

_VIA = re.compile(r"\bvia (NET/[A-Za-z]+|P2P|SHM|NVLS|CollNet)")
_NET = re.compile(r"Using network (\w+)")


def parse_transports(log_text: str) -> list[str]:
    """Transports NCCL's channels use ("via ..." lines of NCCL_DEBUG=INFO), most used first."""
    counts: dict[str, int] = {}
    for m in _VIA.finditer(log_text):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return sorted(counts, key=lambda k: -counts[k])


def parse_network(log_text: str) -> str:
    """The network plugin NCCL loaded ("IB" or "Socket"), even when no channel uses it."""
    m = _NET.search(log_text)
    return m.group(1) if m else ""


def _free_port() -> int:
    # Not raylm.cluster.ports.free_port: this module imports only the standard library.
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def run_rank(
    rank: int,
    world: int,
    master_addr: str,
    master_port: int,
    *,
    backend: str = "nccl",
    size_bytes: int = 64 << 20,
    iters: int = 10,
    device_index: int | None = None,
    timeout_s: float = 300,
) -> dict[str, Any]:
    """Join a process group as `rank` of `world`, time an all-reduce, return the figures.

    Returns {"rank", "world", "backend", "size_bytes", "iters", "seconds_per_iter",
    "algbw_gbps", "busbw_gbps", "correct", "device"}. busbw follows nccl-tests:
    algbw * 2 (world - 1) / world.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if backend == "nccl":
        dev = torch.device("cuda", rank if device_index is None else device_index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    dist.init_process_group(
        backend,
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        n = max(1, size_bytes // 4)
        x = torch.ones(n, dtype=torch.float32, device=dev)
        dist.all_reduce(x)  # warm-up: builds NCCL's rings and connections
        if dev.type == "cuda":
            torch.cuda.synchronize()
        correct = bool(x[0].item() == world)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        algbw = (n * 4) / dt / 1e9
        return {
            "rank": rank,
            "world": world,
            "backend": backend,
            "size_bytes": n * 4,
            "iters": iters,
            "seconds_per_iter": dt,
            "algbw_gbps": algbw,
            "busbw_gbps": algbw * 2 * (world - 1) / world if world > 1 else algbw,
            "correct": correct,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        }
    finally:
        dist.destroy_process_group()


def _spawn_entry(
    rank: int, world: int, port: int, backend: str, size: int, iters: int, outdir: str
) -> None:
    res = run_rank(rank, world, "127.0.0.1", port, backend=backend, size_bytes=size, iters=iters)
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)


def nccl_debug_env(logdir: str) -> dict[str, str]:
    """Variables that make NCCL log its transport choice into `logdir`."""
    return {
        "NCCL_DEBUG": "INFO",
        "NCCL_DEBUG_SUBSYS": "INIT,NET",
        "NCCL_DEBUG_FILE": os.path.join(logdir, "nccl.%h.%p.log"),
        # NVLink multicast (NVLS) is left off: not every lent machine supports it.
        "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0"),
    }


def read_nccl_logs(logdir: str) -> str:
    text = ""
    for p in sorted(glob.glob(os.path.join(logdir, "nccl.*.log"))):
        with open(p, errors="replace") as f:
            text += f.read()
    return text


def local_probe(
    *,
    backend: str = "nccl",
    nprocs: int | None = None,
    size_bytes: int = 256 << 20,
    iters: int = 20,
    log_dir: str | None = None,
) -> dict[str, Any]:
    """All-reduce across this machine's GPUs (or `nprocs` CPU processes with gloo)."""
    import torch
    import torch.multiprocessing as mp

    if backend == "nccl":
        if not torch.cuda.is_available():
            return {"ok": False, "error": "no CUDA device visible to torch", "backend": backend}
        world = nprocs or torch.cuda.device_count()
    else:
        world = nprocs or 2
    if world < 2:
        return {"ok": False, "error": f"an all-reduce needs 2+ ranks, have {world}"}
    with tempfile.TemporaryDirectory(prefix="raylm-nccl-") as d:
        os.environ.update(nccl_debug_env(d))
        port = _free_port()
        t0 = time.perf_counter()
        mp.spawn(  # type: ignore[attr-defined,no-untyped-call]
            _spawn_entry, args=(world, port, backend, size_bytes, iters, d), nprocs=world, join=True
        )
        ranks = []
        for r in range(world):
            with open(os.path.join(d, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
        log_text = read_nccl_logs(d)
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            for p in glob.glob(os.path.join(d, "nccl.*.log")):
                shutil.copy(p, log_dir)
    nccl_version = ""
    if backend == "nccl":
        v = torch.cuda.nccl.version()  # type: ignore[no-untyped-call]
        nccl_version = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return {
        "ok": all(r["correct"] for r in ranks),
        "backend": backend,
        "world": world,
        "devices": [r["device"] for r in ranks],
        "size_bytes": ranks[0]["size_bytes"],
        "algbw_gbps": round(min(r["algbw_gbps"] for r in ranks), 2),
        "busbw_gbps": round(min(r["busbw_gbps"] for r in ranks), 2),
        "transports": parse_transports(log_text),
        "network": parse_network(log_text),
        "nccl_version": nccl_version,
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda or "",
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    ap.add_argument("--nprocs", type=int, default=None)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--log-dir", default=None, help="Keep NCCL's debug logs here.")
    a = ap.parse_args(argv)
    res = local_probe(
        backend=a.backend,
        nprocs=a.nprocs,
        size_bytes=a.size_mb << 20,
        iters=a.iters,
        log_dir=a.log_dir,
    )
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
