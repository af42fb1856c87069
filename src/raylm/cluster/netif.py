"""Which network interface (and so which IP) a node uses for Ray, Gloo and NCCL.

Multi-NIC hosts are where hand-made clusters break: Ray picks one address, NCCL another,
and placement groups never schedule. raylm picks one interface per node and puts it in
every variable that names one.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ClusterError

# Container and virtual bridges that are never the path between servers.
_SKIP_PREFIXES = (
    "lo",
    "docker",
    "br-",
    "cni",
    "veth",
    "virbr",
    "flannel",
    "cali",
    "kube",
    "tunl",
    "vxlan",
    "podman",
    "lxc",
    "ifb",
)


class NetInterface(BaseModel):
    """One IPv4 interface of this node."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Interface name, e.g. eth0.")
    ip: str = Field(description="Its IPv4 address.")
    netmask: str = Field(description="Its IPv4 netmask.")
    up: bool = Field(description="Whether the link is up.")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.ip}/{self.netmask}", strict=False)

    def reaches(self, ip: str) -> bool:
        """Whether `ip` is on this interface's subnet."""
        return ipaddress.IPv4Address(ip) in self.network


def list_interfaces() -> list[NetInterface]:
    """Every IPv4 interface of this node (loopback included, so callers can say why not)."""
    stats = psutil.net_if_stats()
    out: list[NetInterface] = []
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family == socket.AF_INET and a.netmask:
                st = stats.get(name)
                out.append(
                    NetInterface(
                        name=name, ip=a.address, netmask=a.netmask, up=bool(st and st.isup)
                    )
                )
    return out


def _skipped(name: str) -> bool:
    return name.startswith(_SKIP_PREFIXES)


def _route_source(dest: str) -> str | None:
    # A UDP connect() asks the kernel's routing table for the source address; no packet is sent.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((dest, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def choose_interface(
    *, node_ip: str | None = None, iface: str | None = None, reach: str | None = None
) -> NetInterface:
    """Pick this node's interface.

    Args:
        node_ip: use the interface holding this address.
        iface: use this interface.
        reach: pick the interface whose subnet holds this address (a worker joining a head),
            else the one the routing table uses to reach it.
    """
    ifs = list_interfaces()
    if node_ip:
        for i in ifs:
            if i.ip == node_ip:
                return i
        raise ClusterError(
            f"No interface of this node has the address {node_ip}",
            why="--node-ip must be one of this node's own IPv4 addresses",
            fix="Pick one of: " + ", ".join(f"{i.name}={i.ip}" for i in ifs),
            command="ip -br addr",
        )
    if iface:
        for i in ifs:
            if i.name == iface:
                if not i.up:
                    raise ClusterError(
                        f"Interface {iface} is down",
                        fix=f"Bring it up (ip link set {iface} up) or pick another with --iface",
                        command="ip -br link",
                    )
                return i
        raise ClusterError(
            f"No IPv4 interface named {iface} on this node",
            fix="Pick one of: " + ", ".join(f"{i.name}={i.ip}" for i in ifs),
            command="ip -br addr",
        )
    usable = [i for i in ifs if i.up and not _skipped(i.name) and not i.ip.startswith("127.")]
    if reach:
        for i in usable:
            if i.reaches(reach):
                return i
        src = _route_source(reach)
        for i in ifs:
            if i.ip == src and not i.ip.startswith("127."):
                return i
        raise ClusterError(
            f"No interface of this node reaches {reach}",
            why="no interface shares a subnet with it and the routing table has no path",
            fix="Pass --iface NAME or --node-ip IP of the interface on the head's network",
            command="ip -br addr",
        )
    if not usable:
        raise ClusterError(
            "No usable network interface on this node",
            why="every IPv4 interface is down, loopback, or a container bridge",
            fix="Pass --iface NAME or --node-ip IP",
            command="ip -br addr",
        )
    # Prefer the interface of the default route: it is the one other servers see.
    src = _route_source("192.0.2.1")
    for i in usable:
        if i.ip == src:
            return i
    return usable[0]


def has_infiniband() -> bool:
    """Whether this node has an InfiniBand/RoCE device NCCL could use."""
    p = Path("/sys/class/infiniband")
    return p.is_dir() and any(p.iterdir())


def network_env(nic: NetInterface) -> dict[str, str]:
    """The variables every Ray worker on this node must inherit so Gloo/NCCL/vLLM use `nic`."""
    env = {
        "GLOO_SOCKET_IFNAME": nic.name,
        "NCCL_SOCKET_IFNAME": nic.name,
        "VLLM_HOST_IP": nic.ip,
    }
    if not has_infiniband():
        env["NCCL_IB_DISABLE"] = "1"
    return env
