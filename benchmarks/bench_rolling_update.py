"""A rolling update under load: requests lost (must be 0) and latency during the rollout
against before it, in one run.

`raylm serve` runs the demo model with 2 replicas; client threads send requests back to
back (non-streaming, and one thread of streams) for a baseline window, then
`raylm update` rolls the model to a new version (an engine argument changed) while the
load goes on. Reports, per phase: requests, failures (non-200), broken streams, p50/p99
latency, and the ratio of p99 during to p99 before.

    .venv/bin/python benchmarks/bench_rolling_update.py [--clients 3] [--baseline-s 30]
        [--out benchmarks/results/rolling-update-cpu-DATE.json]

On a 2-core machine each replica gets one core and there is no room for a third: the
rollout drains one old replica before starting each new one (raylm's default when the
cluster has no room to surge), so capacity dips to one replica while each new one loads.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from raylm.cluster.ports import free_port

RAYLM = str(Path(sys.executable).with_name("raylm"))
MODEL = "smollm2-135m-instruct"


class Load:
    """Client threads sending requests back to back, each one recorded."""

    def __init__(self, url: str, key: str, clients: int) -> None:
        self.url, self.key = url, key
        self.rows: list[tuple[float, float, str]] = []  # (start, seconds, outcome)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._requests) for _ in range(clients)]
        self._threads.append(threading.Thread(target=self._streams))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300)

    def _requests(self) -> None:
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16}
        with self._client() as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/completions", json=body)
                    outcome = "ok" if r.status_code == 200 else f"status {r.status_code}"
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                self.rows.append((t0, time.monotonic() - t0, outcome))

    def _streams(self) -> None:
        body = {"model": MODEL, "prompt": "Count:", "max_tokens": 16, "stream": True}
        with self._client() as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    with c.stream("POST", "/v1/completions", json=body) as r:
                        text = "".join(r.iter_text())
                    whole = r.status_code == 200 and text.rstrip().endswith("data: [DONE]")
                    outcome = "stream ok" if whole and '"error"' not in text else "stream broken"
                except httpx.HTTPError as e:
                    outcome = f"stream {type(e).__name__}"
                self.rows.append((t0, time.monotonic() - t0, outcome))


def summary(rows: list[tuple[float, float, str]]) -> dict[str, float | int]:
    lat = sorted(s for _, s, o in rows if o in ("ok", "stream ok"))
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {
        "requests": len(rows),
        "failed": sum(not o.startswith("stream") and o != "ok" for *_, o in rows),
        "broken_streams": sum(o.startswith("stream") and o != "stream ok" for *_, o in rows),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=3, help="Non-streaming client threads.")
    ap.add_argument("--baseline-s", type=float, default=30.0, help="Load before the update.")
    ap.add_argument("--out", type=Path, default=None, help="Write the result as JSON here.")
    args = ap.parse_args()
    key, admin = secrets.token_hex(12), secrets.token_hex(12)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RAYLM_API_KEY": key, "RAYLM_ADMIN_KEY": admin}
    log = Path(tempfile.mkdtemp(prefix="raylm-bench-roll-")) / "serve.log"
    cmd = [RAYLM, "serve", "--replicas", "2", "--cpus-per-replica", "1", "--port", str(port)]
    cmd += ["--name", "bench-roll"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        while not _ready(url):
            if proc.poll() is not None:
                sys.exit(f"raylm serve exited; see {log}")
            time.sleep(1)
        load = Load(url, key, args.clients)
        load.start()
        time.sleep(args.baseline_s)
        began = time.monotonic()
        update = [RAYLM, "update", MODEL, "--engine-arg", "max-num-seqs=4", "--endpoint", url]
        done = subprocess.run(update, env=env, capture_output=True, text=True, timeout=1800)
        ended = time.monotonic()
        time.sleep(5)
        load.stop()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    if done.returncode != 0:
        sys.exit(f"raylm update failed: {done.stderr}")
    before = summary([r for r in load.rows if r[0] < began])
    during = summary([r for r in load.rows if began <= r[0] < ended])
    result = {
        "clients": args.clients,
        "stream_clients": 1,
        "rollout_s": round(ended - began, 1),
        "before": before,
        "during": during,
        "after": summary([r for r in load.rows if r[0] >= ended]),
        "p99_during_over_before": round(during["p99_ms"] / before["p99_ms"], 2),
        "lost": sum(p["failed"] + p["broken_streams"] for p in (before, during)),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
