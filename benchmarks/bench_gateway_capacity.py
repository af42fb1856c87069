"""Capacity per core: raylm's gateway, vllm-router and nginx in front of an instant upstream.

    apt-get install wrk nginx gcc; pip install vllm-router   (in a venv of its own)
    .venv/bin/python benchmarks/bench_gateway_capacity.py [--seconds 5] [--rounds 2]
        [--only raylm,vllm-router,nginx] [--vllm-router PATH] [--base-src DIR] [--out F]
        [--workers N --wrk-threads T]   (N+1 cores or more)  [--floor]

- The upstream (`instant_upstream.c`, built here with cc) answers OpenAI chat requests at
  once: a JSON answer, or 16 SSE events + usage + [DONE]. Its capacity alone is the
  `direct` row.
- Each proxy is pinned to core 0 (`taskset`); wrk and the upstream share core 1. The
  proxies run as shipped: raylm's gateway on uvloop as `raylm serve` runs it (no API key,
  least-outstanding over one replica), vllm-router with round_robin, nginx with one worker
  and upstream keep-alive.
- `--workers N` adds `raylm-xN`: `raylm serve`'s gateway with N workers on one port
  (raylm.gateway.workers), pinned to cores 0..N-1; wrk and the upstream then move to the
  cores after them. Its req/s over `raylm`'s is the scaling with cores.
- `--floor` adds `python-floor` (python_floor_proxy.py), pinned like the others: the least
  a Python proxy on uvloop + httptools does per request, so the gap between it and raylm
  is raylm's stack and features, not the language.
- Scenarios: 1 connection (added latency against `direct`), 64 connections non-streaming,
  streaming (the whole stream in one upstream write), and streaming with one upstream write
  per event (each a TCP segment the proxy handles on its own).
- Interleaved: each round runs the targets forward then backward (A-B-C-C-B-A); figures are
  medians over runs. CPU per request is the proxy's own CPU time (all its processes and
  threads) over the requests wrk completed.

Targets (issue 13): non-streaming and streaming capacity per core at least vllm-router's;
added p50 at 1 connection at most 1.5x vllm-router's; p99.9 at saturation at most 3x p50.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from raylm.cluster.ports import free_port

HERE = Path(__file__).resolve().parent
BODY = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 16,
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d, "p999_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


@contextlib.contextmanager
def _process(
    cmd: list[str], health: str | None, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while health is not None:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{cmd} not healthy: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (nginx's worker, a gateway's threads)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    return 0.0


# Where the proxies run (core 0; cores 0..N-1 for raylm's N workers) and where the load
# runs (wrk and the upstream): set in main().
LOAD_CORES = "1"
WRK_THREADS = 1


def _wrk(url: str, conns: int, seconds: int, stream: bool, script: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_BODY": json.dumps({**BODY, "stream": stream})}
    cmd = ["taskset", "-c", LOAD_CORES, os.environ.get("WRK", "wrk"), f"-t{WRK_THREADS}"]
    cmd += [f"-c{conns}", f"-d{seconds}s", "-s", str(script)]
    p = subprocess.run(
        [*cmd, url + "/v1/chat/completions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({p.returncode}): {p.stdout[-1000:]} {p.stderr[-1000:]}")
    res: dict[str, Any] = json.loads(line[7:])
    res["req_per_s"] = res["requests"] / (res["duration_us"] / 1e6)
    return res


def _targets(
    mode: str,
    tmp: Path,
    only: list[str],
    router: str | None,
    base_src: str | None,
    workers: int,
    floor: bool = False,
) -> contextlib.ExitStack:
    """Start the upstream (mode: 'whole' or 'chunk-writes') and each proxy; the stack's
    `targets` maps a name to (url, pid or None)."""
    stack = contextlib.ExitStack()
    up_port = free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    cmd = ["taskset", "-c", LOAD_CORES, str(tmp / "instant_upstream"), str(up_port)]
    if mode == "chunk-writes":
        cmd.append("--chunk-writes")
    stack.enter_context(_process(cmd, up_url + "/health", tmp / f"upstream-{mode}.log"))
    targets: dict[str, tuple[str, int | None]] = {"direct": (up_url, None)}
    pin = ["taskset", "-c", "0"]
    if "nginx" in only:
        port = free_port()
        conf = tmp / f"nginx-{mode}.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp, upstream=up_port, port=port))
        proc = stack.enter_context(
            _process(
                [*pin, "nginx", "-p", str(tmp), "-c", str(conf)],
                f"http://127.0.0.1:{port}/health",
                tmp / "nginx.log",
            )
        )
        targets["nginx"] = (f"http://127.0.0.1:{port}", proc.pid)
    if "vllm-router" in only and router:
        port = free_port()
        cmd = [
            *pin,
            router,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--worker-urls",
            up_url,
            "--policy",
            "round_robin",
            "--log-level",
            "warning",
        ]
        proc = stack.enter_context(
            _process(cmd, f"http://127.0.0.1:{port}/health", tmp / f"vllm-router-{mode}.log")
        )
        targets["vllm-router"] = (f"http://127.0.0.1:{port}", proc.pid)
    if floor:
        port = free_port()
        cmd = [*pin, sys.executable, str(HERE / "python_floor_proxy.py"), str(up_port), str(port)]
        proc = stack.enter_context(
            _process(cmd, f"http://127.0.0.1:{port}/health", tmp / f"python-floor-{mode}.log")
        )
        targets["python-floor"] = (f"http://127.0.0.1:{port}", proc.pid)
    # name: (source tree, gateway workers, cores)
    raylms: dict[str, tuple[str | None, int, str]] = {"raylm": (None, 1, "0")}
    if base_src:
        raylms["raylm-base"] = (base_src, 1, "0")
    if workers > 1:
        raylms[f"raylm-x{workers}"] = (None, workers, f"0-{workers - 1}")
    for name, (src, n, cores) in raylms.items():
        if "raylm" not in only:
            continue
        port = free_port()
        # The same child as bench_gateway_latency's: the gateway alone on uvloop.
        latency = str(HERE / "bench_gateway_latency.py")
        cmd = ["taskset", "-c", cores, sys.executable, latency, "--serve-gateway", up_url]
        cmd += [str(port), "uvloop", "--serve-workers", str(n)]
        env = {**os.environ, "PYTHONPATH": src} if src else None
        proc = stack.enter_context(
            _process(cmd, f"http://127.0.0.1:{port}/health", tmp / f"{name}-{mode}.log", env)
        )
        targets[name] = (f"http://127.0.0.1:{port}", proc.pid)
    stack.targets = targets  # type: ignore[attr-defined]
    return stack


def _scenario(
    targets: dict[str, tuple[str, int | None]],
    conns: int,
    stream: bool,
    args: argparse.Namespace,
    script: Path,
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    order = list(targets)
    for _ in range(args.rounds):
        for name in order + order[::-1]:  # A-B-C-C-B-A
            url, pid = targets[name]
            _wrk(url, conns, 1, stream, script)  # warm: connections, pools, caches
            cpu0 = _cpu_seconds(pid) if pid else 0.0
            res = _wrk(url, conns, args.seconds, stream, script)
            if pid:
                res["cpu_us_per_req"] = (_cpu_seconds(pid) - cpu0) / max(res["requests"], 1) * 1e6
            runs[name].append(res)
            print(
                f"  {name:12s} {res['req_per_s']:9.0f} req/s  p50 {res['p50_us']} us  "
                f"p99.9 {res['p999_us']} us  errors {res['errors']}+{res['non2xx']}",
                flush=True,
            )
    return runs


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    out = {}
    for name, rs in runs.items():
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in ("req_per_s", "p50_us", "p99_us", "p999_us")
        }
        cpu = [r["cpu_us_per_req"] for r in rs if "cpu_us_per_req" in r]
        med["cpu_us_per_req"] = statistics.median(cpu) if cpu else None
        med["errors"] = sum(r["errors"] + r["non2xx"] for r in rs)
        out[name] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in med.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="raylm,vllm-router,nginx")
    ap.add_argument("--vllm-router", default=shutil.which("vllm-router"))
    ap.add_argument("--scenarios", default="c1,c64,c64-stream,c64-stream-chunks")
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--base-src",
        help="also run raylm's gateway from this source tree (its src/, e.g. a worktree of "
        "an earlier commit) as `raylm-base`: a change's effect within the same run",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also run raylm with this many gateway workers (`raylm-xN`) on cores 0..N-1; "
        "wrk and the upstream then run on the cores after them",
    )
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also run python_floor_proxy.py (`python-floor`): the least work a Python "
        "proxy on uvloop + httptools can do per request, raylm's floor",
    )
    ap.add_argument("--upstream-bin", type=Path, help="a prebuilt instant_upstream (no cc)")
    args = ap.parse_args()
    global LOAD_CORES, WRK_THREADS
    cpus = os.cpu_count() or 1
    if args.workers > 1:
        if cpus < args.workers + 1:
            raise SystemExit(f"--workers {args.workers} needs {args.workers + 1} cores or more")
        LOAD_CORES = f"{args.workers}-{cpus - 1}"
    WRK_THREADS = args.wrk_threads
    tmp = Path(tempfile.mkdtemp(prefix="raylm-bench-capacity-"))
    if args.upstream_bin:
        shutil.copy(args.upstream_bin, tmp / "instant_upstream")
    else:
        cc = ["cc", "-O2", "-D_GNU_SOURCE", "-o", str(tmp / "instant_upstream")]
        subprocess.run([*cc, str(HERE / "instant_upstream.c")], check=True)
    script = tmp / "bench.lua"
    script.write_text(WRK_SCRIPT)
    only = args.only.split(",")
    scenarios = args.scenarios.split(",")
    plan = {  # scenario: (upstream mode, connections, streamed)
        "c1": ("whole", 1, False),
        "c64": ("whole", 64, False),
        "c64-stream": ("whole", 64, True),
        "c64-stream-chunks": ("chunk-writes", 64, True),
    }
    report: dict[str, Any] = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cpus": cpus,
        "workers": args.workers,
        "load_cores": LOAD_CORES,
        "wrk_threads": WRK_THREADS,
    }
    for mode in ("whole", "chunk-writes"):
        todo = [s for s in scenarios if plan[s][0] == mode]
        if not todo:
            continue
        with _targets(
            mode, tmp, only, args.vllm_router, args.base_src, args.workers, args.floor
        ) as stack:
            targets = stack.targets  # type: ignore[attr-defined]
            for name in todo:
                _, conns, stream = plan[name]
                print(f"{name}: {conns} connection(s), {'streamed' if stream else 'whole answers'}")
                runs = _scenario(targets, conns, stream, args, script)
                report[name] = {"summary": _summary(runs), "runs": runs}
                if name == "c1":  # added latency: each proxy's p50 less the upstream's alone
                    direct = report[name]["summary"]["direct"]["p50_us"]
                    for s in report[name]["summary"].values():
                        s["added_p50_us"] = round(s["p50_us"] - direct, 1)
                print(json.dumps(report[name]["summary"], indent=1), flush=True)
                if args.out:
                    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
