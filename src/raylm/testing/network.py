"""The network of a NetnsCluster, through iproute2 only (no iptables/nft needed).

Owns whether this host can build network namespaces at all, the `ip` calls, the check that
a cluster's subnet is free, the bridge and each machine's namespace and veth (made and
removed), and the faults on one machine's network: its bridge port down and up, a TCP port
blocked and unblocked.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys

from raylm.testing.machine import NetnsNode


def netns_unavailable_reason() -> str | None:
    """Why network-namespace clusters cannot be built here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root (run the tests as root)"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 util-linux)"
    probe = f"rlprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"`ip netns add` failed: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run_ip(*args: str) -> None:
    """Run `ip ARGS`; raise with its stderr when it fails."""
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")


def check_subnet_free(subnet: str) -> None:
    """Refuse a subnet some interface of this host already has an address in."""
    net = ipaddress.IPv4Network(f"{subnet}.0/24")
    p = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True)
    for link in json.loads(p.stdout or "[]"):
        for a in link.get("addr_info", []):
            if ipaddress.IPv4Address(a["local"]) in net:
                raise RuntimeError(
                    f"subnet {net} is already used by {link['ifname']} ({a['local']}); "
                    "pick another subnet= or remove the stale bridge"
                )


def add_bridge(bridge: str, cidr: str) -> None:
    """Create the bridge in the root namespace with the host's address `cidr` on it."""
    run_ip("link", "add", bridge, "type", "bridge")
    run_ip("addr", "add", cidr, "dev", bridge)
    run_ip("link", "set", bridge, "up")


def plug_node(n: NetnsNode, bridge: str) -> None:
    """Create node n's namespace and a veth pair: eth0 (n.ip) inside, n.host_veth on `bridge`."""
    run_ip("netns", "add", n.netns)
    run_ip("link", "add", n.host_veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns)
    run_ip("link", "set", n.host_veth, "master", bridge)
    run_ip("link", "set", n.host_veth, "up")
    run_ip("-n", n.netns, "addr", "add", f"{n.ip}/24", "dev", "eth0")
    run_ip("-n", n.netns, "link", "set", "eth0", "up")
    run_ip("-n", n.netns, "link", "set", "lo", "up")


def unplug_node(n: NetnsNode) -> None:
    """Delete node n's namespace and veth, whatever of them exists."""
    subprocess.run(["ip", "netns", "del", n.netns], capture_output=True)
    subprocess.run(["ip", "link", "del", n.host_veth], capture_output=True)


def remove_bridge(bridge: str) -> None:
    """Delete the bridge, if it exists."""
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def cut_link(n: NetnsNode) -> None:
    """Take node n off the network (its bridge port down)."""
    run_ip("link", "set", n.host_veth, "down")


def restore_link(n: NetnsNode) -> None:
    """Put node n back on the network."""
    run_ip("link", "set", n.host_veth, "up")


def block_tcp_port(n: NetnsNode, port: int) -> None:
    """Drop TCP connections from other hosts to node n's `port` (see NetnsCluster.block_port)."""
    if port not in n.blocked_ports:
        _port_rule(n, "add", port)
        n.blocked_ports.add(port)


def unblock_tcp_port(n: NetnsNode, port: int) -> None:
    """Undo block_tcp_port."""
    if port in n.blocked_ports:
        _port_rule(n, "del", port)
        n.blocked_ports.discard(port)


def _port_rule(n: NetnsNode, action: str, port: int) -> None:
    prio = str(_rule_prio(port))
    run_ip(
        "-n",
        n.netns,
        "rule",
        action,
        "priority",
        prio,
        "ipproto",
        "tcp",
        "sport",
        str(port),
        "prohibit",
    )


def _rule_prio(port: int) -> int:
    # One rule priority per port, so unblock_tcp_port deletes exactly its own rule.
    return 1000 + port % 30000
