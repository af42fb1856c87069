"""Throughput of two replicas on two namespace nodes against one replica, in one run.

Builds a real 3-node Ray cluster from network namespaces (needs root), syncs the demo model
to every node, then serves it twice through `raylm serve` on the head: once with one
replica, once with two (spread over two nodes). raylm pins each CPU replica to its own core
(one slot per host), so both setups get one core per replica. The same closed-loop load
(C concurrent clients, fixed prompts, `ignore_eos`, fixed output length) runs against the
gateway each time; the result is generated tokens per second and the ratio (target: 1.8x).
It also measures the gateway's added latency on the two-replica deployment: sequential
one-token requests, alternating gateway and replica (target: under 1 ms at the median).

    .venv/bin/python benchmarks/bench_multinode_throughput.py [--clients 8] [--seconds 60]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from raylm.home import models_dir
from raylm.models.store import ModelStore
from raylm.testing.machine import raylm_argv
from raylm.testing.netns import NetnsCluster

MODEL = "smollm2-135m-instruct"


def serve(c: NetnsCluster, replicas: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = 8100 + replicas
    with open(log, "wb") as out:
        proc = c.popen(
            0,
            raylm_argv("serve", "--replicas", str(replicas), "--cpus-per-replica", "1",
                       "--name", f"bench{replicas}", "--host", c.head_ip, "--port", str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 1200
    while b"raylm is ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"raylm serve did not get ready; see {log}")
        time.sleep(1)
    return proc, f"http://{c.head_ip}:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=180)


def load(url: str, clients: int, seconds: float, out_tokens: int) -> dict[str, float]:
    body = {"model": MODEL, "prompt": "Tell me a story about a lighthouse keeper.",
            "max_tokens": out_tokens, "ignore_eos": True, "temperature": 0}  # fmt: skip
    stop_at = time.monotonic() + seconds

    def client(_: int) -> tuple[int, int]:
        done = tokens = 0
        with httpx.Client(timeout=300) as h:
            while time.monotonic() < stop_at:
                r = h.post(f"{url}/v1/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
                done += 1
        return done, tokens

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    wall = time.monotonic() - t0
    reqs, toks = sum(r[0] for r in results), sum(r[1] for r in results)
    return {"requests": reqs, "tokens": toks, "seconds": round(wall, 1),
            "tokens_per_s": round(toks / wall, 2)}  # fmt: skip


def added_latency(gateway: str, replica: str, n: int) -> dict[str, float]:
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    direct, via = [], []
    with httpx.Client(timeout=60) as h:
        for _ in range(5):
            h.post(f"{gateway}/v1/completions", json=body)
        for _ in range(n):
            for url, acc in ((replica, direct), (gateway, via)):
                t = time.perf_counter()
                h.post(f"{url}/v1/completions", json=body).raise_for_status()
                acc.append((time.perf_counter() - t) * 1000)
    pairs = [v - d for v, d in zip(via, direct, strict=True)]
    return {"direct_median_ms": round(statistics.median(direct), 3),
            "gateway_median_ms": round(statistics.median(via), 3),
            "added_median_ms": round(statistics.median(pairs), 3)}  # fmt: skip


def replica_url(c: NetnsCluster, gateway: str) -> str:
    # The replicas' URLs are internal; read one from the head's controller through Ray.
    code = (
        "import json, ray\nray.init(namespace='raylm', logging_level='ERROR')\n"
        "a = ray.get_actor('raylm-controller-bench2', namespace='raylm')\n"
        "print(json.dumps(ray.get(a.replica_infos.remote())))\n"
    )
    import sys

    p = c.run(0, [sys.executable, "-c", code], timeout=120)
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    return str(rows[0]["url"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--latency-requests", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raylm-bench-mn-"))
    src = ModelStore(models_dir())
    entry = src.resolve(None)
    with NetnsCluster(3, subnet="10.80.0", workdir=work, num_cpus=1) as c:
        c.start()
        ModelStore(c.nodes[0].raylm_home / "models").copy_from(src, entry.name)
        c.raylm(0, "model", "sync", MODEL, timeout=900)
        results = {}
        for replicas in (1, 2):
            proc, url = serve(c, replicas, work / f"serve{replicas}.log")
            try:
                results[f"replicas_{replicas}"] = load(url, args.clients, args.seconds, args.tokens)
                if replicas == 2:
                    results["gateway_latency"] = added_latency(
                        url, replica_url(c, url), args.latency_requests
                    )
            finally:
                stop(proc)
            print(json.dumps(results, indent=2), flush=True)
    one, two = results["replicas_1"]["tokens_per_s"], results["replicas_2"]["tokens_per_s"]
    results["throughput_ratio"] = round(two / one, 2)
    results["targets"] = {"throughput_ratio": ">= 1.8", "added_median_ms": "< 1"}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
