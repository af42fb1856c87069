"""Latency the gateway adds per request, against calling the replica directly.

N sequential small requests (POST /v1/completions, max_tokens=1), alternating between
the replica and the gateway in front of it so both see the same load; the gateway runs
in a process of its own, as in `raylm serve`. Reports median and p90 of each, the added
latency (difference of medians, and median of paired differences) and the ratio.

    .venv/bin/python benchmarks/bench_gateway_latency.py                # starts a replica
    .venv/bin/python benchmarks/bench_gateway_latency.py --replica-url http://127.0.0.1:8001

Target (issue 2): under 1 ms added at the median.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from raylm.cluster.ports import free_port

MODEL = "smollm2-135m-instruct"


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited with {proc.returncode}; log: {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{url} not healthy after {timeout_s} s; log: {log}")


@contextlib.contextmanager
def _process(cmd: list[str], url: str, timeout_s: float, env: dict[str, str]) -> Iterator[str]:
    log_path = Path(tempfile.mkdtemp(prefix="raylm-bench-")) / "process.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        _wait_healthy(url, proc, timeout_s, log_path)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def _replica(url: str | None) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    from raylm.models.store import ModelStore

    path = ModelStore().resolve(None).path
    port = free_port()
    cmd = [
        sys.executable, "-m", "raylm.serve.launcher", "serve", str(path), "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--gpu-memory-utilization", "0.3", "--max-model-len", "2048",
        "--served-model-name", MODEL,
    ]  # fmt: skip
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "1"),
    }
    with _process(cmd, f"http://127.0.0.1:{port}", 900, env) as u:
        yield u


def serve_gateway(replica_url: str, port: int, loop: str, workers: int = 1) -> None:
    """Child-process mode: a gateway over one replica (in `workers` processes), until
    SIGTERM."""
    from raylm.gateway import GatewaySettings, StaticReplicaSource, create_gateway, run_gateway
    from raylm.gateway.heap import settle_heap
    from raylm.replica import ReplicaInfo, ReplicaState

    rep = ReplicaInfo(replica_id="r0", model=MODEL, url=replica_url, node="127.0.0.1",
                      state=ReplicaState.READY)  # fmt: skip
    gateway = create_gateway(StaticReplicaSource([rep]), GatewaySettings())

    async def main() -> None:
        ready = asyncio.Event()
        serving = run_gateway(gateway, "127.0.0.1", port, ready_event=ready, workers=workers)
        task = asyncio.create_task(serving)
        started = asyncio.ensure_future(ready.wait())
        await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            await task  # it could not start: say why
        settle_heap()  # as `raylm serve` does once ready
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q * 100) - 1]


def measure(direct: str, gateway: str, n: int, warmup: int) -> dict[str, float]:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    with httpx.Client(timeout=60) as c:
        for i in range(warmup + n):
            order = ("direct", "gateway") if i % 2 else ("gateway", "direct")
            for name in order:
                url = direct if name == "direct" else gateway
                t0 = time.perf_counter()
                r = c.post(url + "/v1/completions", json=body)
                dt = time.perf_counter() - t0
                r.raise_for_status()
                if i >= warmup:
                    times[name].append(dt * 1000)
    d, g = times["direct"], times["gateway"]
    paired = [b - a for a, b in zip(d, g, strict=True)]
    return {
        "n": n,
        "direct_median_ms": statistics.median(d),
        "direct_p90_ms": _quantile(d, 0.9),
        "gateway_median_ms": statistics.median(g),
        "gateway_p90_ms": _quantile(g, 0.9),
        "added_median_ms": statistics.median(g) - statistics.median(d),
        "added_p90_ms": _quantile(g, 0.9) - _quantile(d, 0.9),
        "added_paired_median_ms": statistics.median(paired),
        "ratio_median": statistics.median(g) / statistics.median(d),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--replica-url", help="an already running replica of the demo model")
    p.add_argument("-n", type=int, default=300, help="measured requests per side")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both",
                   help="event loop of the gateway process")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("--serve-gateway", nargs=3, metavar=("REPLICA_URL", "PORT", "LOOP"),
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--serve-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_gateway:
        url, port, loop = args.serve_gateway
        serve_gateway(url, int(port), loop, args.serve_workers)
        return
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    report: dict[str, object] = {}
    with _replica(args.replica_url) as replica:
        for loop in loops:
            port = free_port()
            cmd = [sys.executable, __file__, "--serve-gateway", replica, str(port), loop]
            with _process(cmd, f"http://127.0.0.1:{port}", 60, dict(os.environ)) as gw:
                report[loop] = measure(replica, gw, args.n, args.warmup)
    if args.json:
        print(json.dumps(report))
        return
    for loop, r in report.items():
        assert isinstance(r, dict)
        print(f"gateway on {loop} loop, {r['n']} sequential requests per side (max_tokens=1):")
        print(f"  direct   median {r['direct_median_ms']:.2f} ms  p90 {r['direct_p90_ms']:.2f} ms")
        print(
            f"  gateway  median {r['gateway_median_ms']:.2f} ms  p90 {r['gateway_p90_ms']:.2f} ms"
        )
        print(
            f"  added    median {r['added_median_ms']:.2f} ms"
            f" (paired {r['added_paired_median_ms']:.2f})"
            f"  p90 {r['added_p90_ms']:.2f} ms  ratio {r['ratio_median']:.3f}"
        )


if __name__ == "__main__":
    main()
