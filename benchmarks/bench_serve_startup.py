"""Start-up cost of `raylm serve` against vLLM alone, on the same model, in one run.

Both are timed from process start to the first successful one-token generation (raylm's
own readiness rule; for raylm, the moment it prints that it is ready). Reports each time
and raylm's overhead (target: within vLLM's own + 10 s).

    .venv/bin/python benchmarks/bench_serve_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from raylm.cluster.ports import free_port
from raylm.models.store import ModelStore

RAYLM = str(Path(sys.executable).with_name("raylm"))


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def time_vllm_alone(model: Path, name: str, log: Path) -> float:
    port = free_port()
    argv = [
        sys.executable, "-m", "raylm.serve.launcher", "serve", str(model),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
        "--gpu-memory-utilization", "0.2",
    ]  # fmt: skip
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = {"model": name, "prompt": "Hello", "max_tokens": 1}
        while proc.poll() is None:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=30)
                if r.status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise SystemExit(f"vLLM exited early; see {log}")
    finally:
        stop(proc)


def time_raylm(log: Path) -> float:
    port = free_port()
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [RAYLM, "serve", "--port", str(port), "--name", "bench"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while proc.poll() is None:
            if b"raylm is ready" in log.read_bytes():
                return time.monotonic() - start
            time.sleep(0.25)
        raise SystemExit(f"raylm serve exited early; see {log}")
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1, help="Alternating runs of each.")
    args = ap.parse_args()
    entry = ModelStore().resolve(None)  # convert the demo model first, outside the timing
    tmp = Path(tempfile.mkdtemp(prefix="raylm-bench-"))
    vllm_s, raylm_s = [], []
    for i in range(args.runs):
        vllm_s.append(time_vllm_alone(Path(entry.path), entry.name, tmp / f"vllm-{i}.log"))
        raylm_s.append(time_raylm(tmp / f"raylm-{i}.log"))
        print(f"run {i}: vLLM alone {vllm_s[-1]:.1f} s, raylm serve {raylm_s[-1]:.1f} s")
    v, r = statistics.median(vllm_s), statistics.median(raylm_s)
    result = {
        "model": entry.name,
        "runs": args.runs,
        "vllm_alone_s": round(v, 1),
        "raylm_serve_s": round(r, 1),
        "overhead_s": round(r - v, 1),
        "ratio": round(r / v, 2),
        "target": "overhead <= 10 s",
        "met": r - v <= 10.0,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
