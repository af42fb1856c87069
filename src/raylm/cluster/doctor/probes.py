"""The code `raylm doctor` runs on each node, as Ray tasks and actors pinned there.

A node's versions, interfaces, variables, /dev/shm, disk and listening ports can only be
read on the node, and reachability only tested from it: `node_probe` does all of that in
one task and returns a `NodeProbe`. `ProbeListener` gives the other nodes a port to reach;
`node_clock`, `nccl_rank` and `nccl_local` serve the clock and all-reduce checks.
Nothing here judges what it reads: the check modules do.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster import nccl_probe
from raylm.cluster.exposure import ListeningPort, listening_ports
from raylm.cluster.netif import NetInterface, list_interfaces
from raylm.cluster.node import NodeFacts, local_node_facts

ENV_KEYS = (
    "GLOO_SOCKET_IFNAME",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_DISABLE",
    "VLLM_HOST_IP",
    "RAY_AUTH_MODE",
    "RAYLM_HOME",
)


class PortReach(BaseModel):
    """One TCP connection a node tried to another node's port."""

    model_config = ConfigDict(extra="forbid")

    ip: str = Field(description="The node tried (its IP).")
    name: str = Field(description="What listens there: a RayPorts name, e.g. 'gcs', or 'probe'.")
    port: int = Field(description="The TCP port tried.")
    error: str = Field(description="Why the connection failed ('' when it connected).")


class NodeProbe(BaseModel):
    """What `node_probe` read on one node."""

    model_config = ConfigDict(extra="forbid")

    facts: NodeFacts = Field(description="Versions, /dev/shm, disk and GPUs of the node.")
    env: dict[str, str] = Field(
        description="The ENV_KEYS variables of the node's Ray workers ('' when unset)."
    )
    interfaces: list[NetInterface] = Field(description="The node's IPv4 interfaces.")
    reach: list[PortReach] = Field(description="Each port tried from here, in target order.")
    dashboard: str = Field(
        description="HTTP status the head's dashboard gave without a token, "
        "'unreachable: ...', or '' when not tried."
    )
    listening: list[ListeningPort] = Field(
        description="Non-loopback ports the node's raylm-started processes listen on."
    )

    def reached(self, ip: str, name: str, port: int) -> bool:
        """Whether this node connected to `name` on `ip:port`."""
        return any(
            r.ip == ip and r.name == name and r.port == port and not r.error for r in self.reach
        )


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
) -> NodeProbe:
    """Runs on one node: facts, variables, interfaces, TCP reach to `targets`, dashboard probe.

    `targets`: (node IP, {port name: port}) for every node to try.
    """
    facts = local_node_facts()
    jobs = [(ip, name, port) for ip, ports in targets for name, port in ports.items()]
    # In parallel: a firewall that drops packets costs the whole timeout per port.
    with ThreadPoolExecutor(max_workers=16) as ex:
        errs = list(ex.map(lambda j: _tcp(j[0], j[2], timeout), jobs))
    return NodeProbe(
        facts=facts,
        env={k: os.environ.get(k, "") for k in ENV_KEYS},
        interfaces=list_interfaces(),
        reach=[
            PortReach(ip=ip, name=name, port=port, error=e)
            for (ip, name, port), e in zip(jobs, errs, strict=True)
        ],
        dashboard=_http_status(dashboard_url, timeout) if dashboard_url else "",
        listening=listening_ports(),
    )


def node_clock() -> float:
    """Runs on one node: its clock, for the skew check."""
    return time.time()


def nccl_rank(
    rank: int, world: int, master: str, port: int, backend: str, size: int
) -> dict[str, Any]:
    """Runs on one node: one rank of the between-nodes all-reduce, with NCCL's transport."""
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
    return nccl_probe.local_probe(size_bytes=256 << 20, iters=10)
