"""Which Ray or vLLM ports other nodes can reach without authentication.

Ray's gRPC servers listen on every interface and, with token authentication on, refuse a
caller without the cluster token; its HTTP agents answer 401. What still answers anyone is
read-only (Prometheus metrics, health), unless something is misconfigured: token auth off,
or a vLLM replica whose API takes no key. `raylm doctor` lists each node's listening ports
here (on the node) and has a peer try each one with no credentials.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

import psutil
from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster.ray_process import RUN_MARKER


class PortKind(StrEnum):
    """What listens on a port, as far as exposure goes."""

    RAY = "ray"
    """A Ray daemon or worker (gRPC, or an HTTP agent)."""
    VLLM = "vllm"
    """A vLLM OpenAI server raylm launched."""


class ListeningPort(BaseModel):
    """A TCP port a raylm-started process listens on, reachable from other hosts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(description="The TCP port.")
    bind: str = Field(description="The address it is bound to (0.0.0.0, ::, or an IP).")
    process: str = Field(description="The process name, e.g. raylet, gcs_server.")
    kind: PortKind = Field(description="Ray or vLLM.")


class Verdict(StrEnum):
    """What a peer got from a port without credentials."""

    REFUSED = "refused"
    """It asked for credentials (HTTP 401/403)."""
    NOT_HTTP = "not-http"
    """It speaks gRPC (Ray's token check applies when auth is on)."""
    OPEN = "open"
    """It answered a request without credentials."""
    UNREACHABLE = "unreachable"
    """No connection (a firewall, or it stopped)."""


class Exposure(BaseModel):
    """One port of one node, as a peer saw it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str = Field(description="The node's IP.")
    port: ListeningPort = Field(description="What listens there.")
    verdict: Verdict = Field(description="What the peer got without credentials.")
    detail: str = Field(description="The HTTP status line or error, for the finding.")

    @property
    def api_open(self) -> bool:
        """A vLLM replica serving its OpenAI API to anyone (past the gateway's key)."""
        return self.port.kind is PortKind.VLLM and self.verdict is Verdict.OPEN

    @property
    def unauthenticated(self) -> bool:
        """Reachable with no credentials: an HTTP answer, or a vLLM internal port (torch's
        rendezvous store, ZMQ), which has no authentication at all."""
        return self.verdict is Verdict.OPEN or (
            self.port.kind is PortKind.VLLM and self.verdict is Verdict.NOT_HTTP
        )


def _is_raylm(p: psutil.Process, run_id: str) -> PortKind | None:
    """Ray or vLLM for a process of this run (vLLM: the launcher or one of its children)."""
    try:
        if p.environ().get(RUN_MARKER) != run_id:
            return None
        for q in (p, *p.parents()):
            if "raylm.serve.launcher" in " ".join(q.cmdline()):
                return PortKind.VLLM
    except (psutil.Error, OSError):
        return None
    return PortKind.RAY


def listening_ports() -> list[ListeningPort]:
    """Runs on a node: the non-loopback TCP ports of the processes of this node's raylm run
    (the Ray task running this inherits the run's marker)."""
    run_id = os.environ.get(RUN_MARKER, "")
    if not run_id:
        return []
    out: dict[int, ListeningPort] = {}
    kinds: dict[int, PortKind | None] = {}
    for c in psutil.net_connections(kind="tcp"):
        if c.status != psutil.CONN_LISTEN or not c.pid or not c.laddr:
            continue
        ip, port = c.laddr.ip, c.laddr.port
        if ip.startswith("127.") or ip == "::1" or port in out:
            continue
        if c.pid not in kinds:
            try:
                kinds[c.pid] = _is_raylm(psutil.Process(c.pid), run_id)
            except psutil.Error:
                kinds[c.pid] = None
        kind = kinds[c.pid]
        if kind is None:
            continue
        try:
            name = psutil.Process(c.pid).name()
        except psutil.Error:
            continue
        out[port] = ListeningPort(port=port, bind=ip, process=name, kind=kind)
    return sorted(out.values(), key=lambda p: p.port)


def _ask(host: str, lp: ListeningPort, timeout: float) -> tuple[Verdict, str]:
    # vLLM: its API path (401 when a key is required); Ray: the root.
    path = "/v1/models" if lp.kind is PortKind.VLLM else "/"
    try:
        with socket.create_connection((host, lp.port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            first = s.recv(256)
    except OSError as e:
        if isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower():
            return Verdict.UNREACHABLE, "connection refused"
        if isinstance(e, TimeoutError | socket.timeout):
            return Verdict.NOT_HTTP, "no HTTP answer"
        return Verdict.UNREACHABLE, str(e) or type(e).__name__
    line = first.split(b"\r\n", 1)[0].decode(errors="replace")
    if not line.startswith("HTTP/1."):
        return Verdict.NOT_HTTP, "not HTTP/1 (gRPC)"
    status = line.split(" ", 2)[1] if line.count(" ") else ""
    if status in ("401", "403"):
        return Verdict.REFUSED, f"GET {path}: {status}"
    return Verdict.OPEN, f"GET {path}: {status}"


def probe_ports(
    targets: list[tuple[str, list[ListeningPort]]], timeout: float = 3.0
) -> list[Exposure]:
    """Runs on a peer: try every listed port of every target node with no credentials."""
    jobs = [(ip, lp) for ip, ports in targets for lp in ports]
    with ThreadPoolExecutor(max_workers=16) as ex:
        answers = list(ex.map(lambda j: _ask(j[0], j[1], timeout), jobs))
    return [
        Exposure(node=ip, port=lp, verdict=v, detail=d)
        for (ip, lp), (v, d) in zip(jobs, answers, strict=True)
    ]
