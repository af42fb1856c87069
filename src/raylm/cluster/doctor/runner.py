"""Runs `raylm doctor`: attaches to the cluster, sends the probes to every node through Ray,
and hands what they read to the checks, in the order the report lists them.

The only doctor module that talks to Ray. Ray is imported inside the functions, as
everywhere in raylm.cluster: Ray reads its auth settings when first imported, so the first
import is left to `ensure_attached`, which sets them; and importing the doctor (the unit
tests) then costs no Ray import.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

from raylm.cluster.context import ensure_attached
from raylm.cluster.doctor.checks import (
    check_clock,
    check_disk,
    check_gpu_memory,
    check_gpus,
    check_interface,
    check_nccl_env,
    check_shm,
    check_versions,
)
from raylm.cluster.doctor.fit import check_model_fit
from raylm.cluster.doctor.network import check_auth, check_exposure, check_reach
from raylm.cluster.doctor.probes import (
    NodeProbe,
    ProbeListener,
    nccl_local,
    nccl_rank,
    node_clock,
    node_probe,
)
from raylm.cluster.doctor.report import Check, CheckStatus, DoctorReport, make_check
from raylm.cluster.exposure import Exposure, ListeningPort, probe_ports
from raylm.cluster.inventory import cluster_inventory
from raylm.cluster.node import NodeFacts
from raylm.cluster.nodes import NodeView, cluster_nodes
from raylm.cluster.pinned import run_on_nodes
from raylm.cluster.ports import DEFAULT_PORTS, RayPorts
from raylm.models.store import ModelStore
from raylm.models.weights import read_model_facts

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _err(e: BaseException) -> str:
    """One readable line for an exception (a Ray task error shows its cause)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    text = _ANSI.sub("", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _targets(nodes: list[NodeView], ports: RayPorts) -> list[tuple[str, dict[str, int]]]:
    """Each node's IP and the ports every other node must reach there, by name."""
    out = []
    for n in nodes:
        p = ports.node_ports() | {"probe": ports.probe}
        if n.is_head:
            p = ports.head_ports() | p
        out.append((n.ip, p))
    return out


def run_exposure(
    nodes: list[NodeView],
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


def run_clock(nodes: list[NodeView]) -> list[Check]:
    """Read each node's clock, one node at a time so each round trip stays short."""
    # Function-local: Ray reads its auth settings at import (see the module docstring).
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(node_clock)
    out = []
    for n in nodes:
        sent = time.time()
        reading: float | BaseException
        try:
            reading = ray.get(
                remote.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
                ).remote(),
                timeout=60,
            )
        except Exception as e:
            reading = e
        out.append(check_clock(n.ip, sent, reading, time.time()))
    return out


def run_nccl(
    nodes: list[NodeView], facts: dict[str, NodeFacts], ports: RayPorts
) -> tuple[list[Check], list[dict[str, Any]]]:
    """A real all-reduce inside each multi-GPU node and one between all nodes."""
    # Function-local: Ray reads its auth settings at import (see the module docstring).
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
                make_check(
                    "nccl-intra",
                    n.ip,
                    CheckStatus.FAIL,
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
            make_check(
                "nccl-intra",
                n.ip,
                CheckStatus.PASS,
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
            make_check(
                "nccl-inter",
                "cluster",
                CheckStatus.FAIL,
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
    status = CheckStatus.PASS if ok else CheckStatus.FAIL
    fix = "" if ok else "the reduced values were wrong: check NCCL versions and drivers"
    checks.append(make_check("nccl-inter", "cluster", status, finding, fix))
    return checks, results


def _probe_nodes(
    nodes: list[NodeView], head: NodeView, ports: RayPorts, timeout: float
) -> tuple[list[Check], dict[str, Any]]:
    """Run `node_probe` on every node while a `ProbeListener` holds each node's probe port.

    Returns the listeners' problems and {node_id: NodeProbe or the task's exception}.
    """
    # Function-local: Ray reads its auth settings at import (see the module docstring).
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    checks: list[Check] = []
    listener_cls = ray.remote(num_cpus=0, max_restarts=0)(ProbeListener)
    listeners = {
        n.node_id: listener_cls.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(ports.probe)
        for n in nodes
    }
    ips = {n.node_id: n.ip for n in nodes}
    try:
        for nid, a in listeners.items():
            try:
                err = ray.get(a.ready.remote(), timeout=timeout)
            except Exception as e:
                err = f"{type(e).__name__}"
            if err:
                checks.append(
                    make_check(
                        "probe",
                        ips[nid],
                        CheckStatus.WARN,
                        f"probe listener: {err}",
                        f"free TCP port {ports.probe} on this node",
                    )
                )
        dash = f"http://{head.ip}:{ports.dashboard}/api/version"
        raw = run_on_nodes(node_probe, nodes, _targets(nodes, ports), dash, timeout=timeout)
    finally:
        for a in listeners.values():
            with contextlib.suppress(Exception):
                ray.kill(a)
    return checks, raw


def run_doctor(
    address: str | None = None,
    *,
    nccl: bool = False,
    model: str | None = None,
    ports: RayPorts = DEFAULT_PORTS,
    timeout: float = 120,
) -> DoctorReport:
    """Attach to the cluster and run every check on every node; with `model`, also whether
    its planned layout fits the cluster as it is now."""
    addr = ensure_attached(address)
    listed = cluster_nodes()
    nodes = [n for n in listed if n.alive]
    dead = [n for n in listed if not n.alive]
    ips = {n.node_id: n.ip for n in nodes}
    head = next((n for n in nodes if n.is_head), None)
    checks: list[Check] = [
        make_check(
            "node",
            n.ip,
            CheckStatus.FAIL,
            "Ray reports this node dead",
            "restart it: raylm join HEAD",
        )
        for n in dead
    ]
    if head is None:
        checks.append(
            make_check(
                "node", "cluster", CheckStatus.FAIL, "no alive head node", "raylm up on the head"
            )
        )
        return DoctorReport(address=addr, checks=checks, reachability={}, nccl=[])
    listener_checks, raw = _probe_nodes(nodes, head, ports, timeout)
    checks += listener_checks
    res: dict[str, NodeProbe] = {}
    for nid, r in raw.items():
        if isinstance(r, BaseException):
            checks.append(
                make_check(
                    "node",
                    ips[nid],
                    CheckStatus.FAIL,
                    f"the check task failed: {_err(r)}",
                    "look at the node's Ray logs (raylm status)",
                )
            )
        else:
            res[nid] = r
    facts = {nid: r.facts for nid, r in res.items()}
    checks += check_versions(head, {nid: f.fingerprint for nid, f in facts.items()}, ips)
    for nid, r in res.items():
        peers = [ips[o] for o in res if o != nid]
        checks += check_interface(ips[nid], r.env, r.interfaces, peers)
    checks += check_nccl_env({nid: r.env for nid, r in res.items()}, ips)
    reach_checks, matrix = check_reach(res, ips, ports)
    checks += reach_checks
    for nid, f in facts.items():
        checks += [check_shm(ips[nid], f), check_disk(ips[nid], f), check_gpus(ips[nid], f)]
        checks += check_gpu_memory(ips[nid], f)
    checks += check_auth(head.ip, res, ips, ports)
    listening = {nid: r.listening for nid, r in res.items()}
    alive = [n for n in nodes if n.node_id in res]
    checks += check_exposure(
        run_exposure(alive, listening, ips, timeout), [ips[n.node_id] for n in alive]
    )
    checks += run_clock(nodes)
    if model is not None:
        checks.append(_model_fit(model, timeout))
    nccl_results: list[dict[str, Any]] = []
    if nccl:
        nc, nccl_results = run_nccl(nodes, facts, ports)
        checks += nc
    return DoctorReport(address=addr, checks=checks, reachability=matrix, nccl=nccl_results)


def _model_fit(name: str, timeout: float) -> Check:
    entry = ModelStore().resolve(name)
    inventory = cluster_inventory(timeout=timeout)
    return check_model_fit(name, read_model_facts(Path(entry.path)), inventory)
