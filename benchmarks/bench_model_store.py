"""Model store benchmark: sync vs a plain copy over the same link, verify GB/s per core,
peak memory of the sync processes.

Run as root (it builds a 2-node network-namespace Ray cluster)::

    .venv/bin/python benchmarks/bench_model_store.py [--synthetic-gib 1.5] [--subnet 10.87.0]

Everything is measured in this one run, on this machine, and reported as ratios:

- sync throughput: `raylm`'s sync of a model from node 0 to node 1 (default transport:
  a stream between the two agents set up through Ray; also the Ray object-store
  transport; both with sha256 on arrival, fsync, rename) against a plain TCP copy
  of the same bytes between the same two namespaces (sendfile -> recv -> write, no
  hashing, no fsync). Target: >= 0.8.
- verify throughput: hashing the model's files with 1 thread and with one thread per
  core (page cache warm). Target: >= 1 GB/s per core.
- peak RSS of the sync processes (the two store agents, sampled every 50 ms), for the
  demo model and for a larger synthetic model, to show it does not grow with model size.
  Target: < 256 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from raylm.models.gguf import DEMO_NAME
from raylm.models.manifest import hash_files, list_model_files
from raylm.models.store import ModelStore
from raylm.testing.netns import NetnsCluster
from raylm.testing.network import netns_unavailable_reason

SYNC_DRIVER = r"""
import json, sys, time
from raylm.cluster.context import ensure_attached
from raylm.models.sync import sync_model
ensure_attached()
t0 = time.monotonic()
kw = json.loads(sys.argv[3])
reports = sync_model(sys.argv[1], [sys.argv[2]], **kw)
dt = time.monotonic() - t0
print(json.dumps({"seconds": dt, "reports": {k: v.model_dump() for k, v in reports.items()}}))
"""

RECEIVER = r"""
import socket, sys, os
ip, port, out, total = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port)); s.listen(1); print("listening", flush=True)
c, _ = s.accept()
buf = bytearray(8 << 20); view = memoryview(buf); got = 0
with open(out, "wb") as f:
    while got < total:
        n = c.recv_into(buf)
        if not n: break
        f.write(view[:n]); got += n
c.sendall(b"k"); c.close()
"""

SENDER = r"""
import socket, sys, time, json
ip, port, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
c = socket.create_connection((ip, port))
t0 = time.monotonic(); sent = 0
for p in files:
    with open(p, "rb") as f:
        sent += c.sendfile(f)
c.recv(1)
print(json.dumps({"seconds": time.monotonic() - t0, "bytes": sent}))
"""


def _status(pid: int) -> dict[str, int]:
    """Memory lines of /proc/PID/status, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k.startswith(("VmRSS", "Rss")):
                out[k] = int(v.split()[0]) * 1024
    return out


class RssSampler:
    """Peak RSS of every process whose title says it is a store agent (`ray::_Agent...`)."""

    def __init__(self) -> None:
        self.peak: dict[tuple[int, str], int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in psutil.process_iter(["pid", "cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if cmd.startswith("ray::_Agent"):
                        st = _status(p.pid)
                        for k in ("VmRSS", "RssAnon", "RssShmem"):
                            key = (p.pid, k)
                            self.peak[key] = max(self.peak.get(key, 0), st.get(k, 0))
                except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
                    pass
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *a: object) -> None:
        self._stop.set()
        self._t.join()


def put_model(src: ModelStore, name: str, dst: ModelStore) -> int:
    m = src.read_manifest(name)
    assert m is not None
    shutil.rmtree(dst.model_dir(name), ignore_errors=True)
    shutil.copytree(src.model_dir(name), dst.model_dir(name))
    dst.write_manifest(m)
    dst.write_stamp(m)
    return m.size_bytes


def make_synthetic(store: ModelStore, name: str, gib: float) -> int:
    d = store.model_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"model_type": "llama"}')
    n_files = 3
    per = int(gib * 2**30 / n_files)
    block = os.urandom(8 << 20)
    for i in range(n_files):
        with open(d / f"model-{i:05d}.safetensors", "wb") as f:
            left = per
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
    return store.import_dir(d, name).size_bytes


def bench_sync(c: NetnsCluster, name: str, tuning: dict[str, int]) -> dict[str, Any]:
    dst = ModelStore(c.nodes[1].raylm_home / "models")
    dst.forget(name)
    shutil.rmtree(dst.model_dir(name), ignore_errors=True)
    with RssSampler() as rss:
        argv = [sys.executable, "-c", SYNC_DRIVER, name, c.nodes[1].ip, json.dumps(tuning)]
        p = c.run(0, argv, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"sync failed:\n{p.stdout}\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    rep = res["reports"][c.nodes[1].ip]
    if not rep["ok"]:
        raise RuntimeError(f"sync failed: {rep['error']}")
    return {
        "bytes": rep["bytes_sent"],
        "seconds_node": rep["seconds"],
        "seconds_total": res["seconds"],
        "peak_mib": {f"{pid}.{k}": round(v / 2**20, 1) for (pid, k), v in sorted(rss.peak.items())},
    }


def bench_plain(c: NetnsCluster, store: ModelStore, name: str, port: int) -> dict[str, Any]:
    d = store.model_dir(name)
    files = [str(d / r) for r in list_model_files(d)]
    total = sum(os.path.getsize(f) for f in files)
    out = c.nodes[1].home / "plain-copy.bin"
    recv = c.popen(
        1,
        [sys.executable, "-c", RECEIVER, c.nodes[1].ip, str(port), str(out), str(total)],
        stdout=-1,
        text=True,
    )
    assert recv.stdout is not None
    recv.stdout.readline()
    p = c.run(0, [sys.executable, "-c", SENDER, c.nodes[1].ip, str(port), *files], timeout=1800)
    recv.wait(60)
    out.unlink(missing_ok=True)
    if p.returncode != 0:
        raise RuntimeError(f"plain copy failed: {p.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def bench_verify(store: ModelStore, name: str) -> dict[str, Any]:
    d = store.model_dir(name)
    rels = list_model_files(d)
    total = sum((d / r).stat().st_size for r in rels)
    hash_files(d, rels, workers=1)  # warm the page cache
    out: dict[str, Any] = {"bytes": total}
    cores = os.cpu_count() or 1
    for workers in sorted({1, cores}):
        t0 = time.monotonic()
        hash_files(d, rels, workers=workers)
        dt = time.monotonic() - t0
        out[f"gbps_{workers}_threads"] = round(total / dt / 1e9, 3)
        out[f"gbps_per_core_{workers}_threads"] = round(total / dt / 1e9 / workers, 3)
    return out


def _max_peaks(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Peak memory by kind (VmRSS, RssAnon, RssShmem) over every agent of every run."""
    out: dict[str, float] = {}
    for r in runs:
        for key, v in r["peak_mib"].items():
            kind = key.split(".", 1)[1]
            out[kind] = max(out.get(kind, 0.0), v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic-gib", type=float, default=1.5)
    ap.add_argument("--subnet", default="10.87.0")
    ap.add_argument("--port", type=int, default=29871)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--tunings",
        default="[]",
        help='JSON list of extra sync_model settings to try, e.g. [{"chunk_bytes": 16777216}]',
    )
    args = ap.parse_args()
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    demo = ModelStore()  # the user's store: the demo conversion is reused
    demo.resolve(None)
    results: dict[str, Any] = {"cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        c = NetnsCluster(2, subnet=args.subnet, workdir=Path(tmp), num_cpus=1)
        with c:
            c.start()
            head = ModelStore(c.nodes[0].raylm_home / "models")
            sizes = {DEMO_NAME: put_model(demo, DEMO_NAME, head)}
            synth = "bench-synthetic"
            sizes[synth] = make_synthetic(head, synth, args.synthetic_gib)
            results["verify"] = bench_verify(head, DEMO_NAME)
            for name in (DEMO_NAME, synth):
                for extra in json.loads(args.tunings):
                    s = bench_sync(c, name, extra)
                    results.setdefault("tunings", []).append(
                        {
                            "model": name,
                            **extra,
                            "mbps": round(s["bytes"] / s["seconds_node"] / 1e6, 1),
                        }
                    )
                # Interleaved repeats, medians: the machine's load changes from second to second.
                plains, syncs, objss = [], [], []
                for _ in range(args.repeats):
                    plains.append(bench_plain(c, head, name, args.port))
                    syncs.append(bench_sync(c, name, {}))
                    objss.append(bench_sync(c, name, {"transport": "object-store"}))
                plain_bps = statistics.median(p["bytes"] / p["seconds"] for p in plains)
                sync_bps = statistics.median(x["bytes"] / x["seconds_node"] for x in syncs)
                e2e_bps = statistics.median(x["bytes"] / x["seconds_total"] for x in syncs)
                objs_bps = statistics.median(x["bytes"] / x["seconds_node"] for x in objss)
                results[name] = {
                    "size_mib": round(sizes[name] / 2**20, 1),
                    "repeats": args.repeats,
                    "plain_copy_mbps": round(plain_bps / 1e6, 1),
                    "sync_mbps_on_node": round(sync_bps / 1e6, 1),
                    "sync_mbps_end_to_end": round(e2e_bps / 1e6, 1),
                    "ratio_sync_to_plain": round(sync_bps / plain_bps, 3),
                    "object_store_mbps_on_node": round(objs_bps / 1e6, 1),
                    "ratio_object_store_to_plain": round(objs_bps / plain_bps, 3),
                    "peak_mib_per_agent": _max_peaks(syncs),
                    "peak_mib_per_agent_object_store": _max_peaks(objss),
                }
    print(json.dumps(results, indent=1))
    print()
    print(f"cores: {results['cpu_cores']}")
    v = results["verify"]
    for k in sorted(v):
        if k.startswith("gbps_per_core"):
            print(f"verify {k}: {v[k]} GB/s per core (target >= 1.0)")
    for name in (DEMO_NAME, "bench-synthetic"):
        r = results[name]
        peaks = r["peak_mib_per_agent"]
        rss, anon = peaks.get("VmRSS", 0), peaks.get("RssAnon", 0)
        print(
            f"{name} ({r['size_mib']} MiB): sync {r['sync_mbps_on_node']} MB/s vs plain copy "
            f"{r['plain_copy_mbps']} MB/s -> ratio {r['ratio_sync_to_plain']} (target >= 0.8); "
            f"peak agent RSS {rss} MiB, of it private (RssAnon) {anon} MiB (target < 256)"
        )
        peaks = r["peak_mib_per_agent_object_store"]
        rss, anon = peaks.get("VmRSS", 0), peaks.get("RssAnon", 0)
        print(
            f"   object-store transport: {r['object_store_mbps_on_node']} MB/s -> ratio "
            f"{r['ratio_object_store_to_plain']}; peak agent RSS {rss} MiB, private {anon} MiB"
        )


if __name__ == "__main__":
    main()
