"""A real multi-node Ray cluster on one machine, made of Linux network namespaces.

Each node is a network namespace on a bridge in the root namespace. A node gets what a
separate machine has of its own and nothing more: its network, its HOME (so its own
`~/.raylm`) and its TMPDIR. It gets none of the variables raylm must work out itself
(cluster address, token, node IP, interface names): the cluster comes up through the
commands a user types, `raylm up` and then the `raylm join` line it printed, verbatim.
Fault helpers kill a node, cut it off the network, block a port, shrink its /dev/shm,
and bring it back.

Every process of a node runs through `nsenter` into the namespaces of one anchor
process per node (`ip netns exec NAME sleep infinity`): the anchor's mount namespace
is private to the node, so a node can get its own /dev/shm without touching the host.
Processes are stopped by pid only: the ones this object started, and the ones the
kernel lists in the node's network namespace (`ip netns pids`), never by name.

One machine (NetnsNode, its environment, anchor and pids) is testing/machine.py; the
iproute2 side (host and subnet checks, bridge, namespaces, veths, network faults) is
testing/network.py. Needs root and iproute2. Usage::

    with NetnsCluster(3, workdir=tmp_path) as c:
        c.start()
        print(c.raylm(1, "status").stdout)
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from raylm.testing.machine import (
    NetnsNode,
    kill_group,
    kill_pids,
    machine_base_env,
    pid_alive,
    printed_join_line,
    raylm_argv,
    start_anchor,
)
from raylm.testing.network import (
    add_bridge,
    block_tcp_port,
    check_subnet_free,
    cut_link,
    netns_unavailable_reason,
    plug_node,
    remove_bridge,
    restore_link,
    unblock_tcp_port,
    unplug_node,
)
from raylm.testing.orphans import remove_orphans

log = logging.getLogger(__name__)

_counter = itertools.count()
GCS_PORT = 6379


class NetnsCluster:
    """N network-namespace nodes on a bridge, brought up with `raylm up` / `raylm join`.

    Args:
        n_nodes: number of nodes; node 0 is the head.
        subnet: first three octets; node i gets `<subnet>.<i+1>`, the bridge `<subnet>.254`.
        workdir: where logs of the harness go (each node's HOME and TMPDIR live under a
            short /tmp directory: Ray's unix sockets must fit in 108 bytes).
        env: extra environment for every process of every node.
        num_cpus: passed as `--num-cpus` to `up`/`join` when set; None (the default) runs
            the commands exactly as a user types them.
    """

    def __init__(
        self,
        n_nodes: int,
        *,
        subnet: str = "10.77.0",
        workdir: Path,
        env: dict[str, str] | None = None,
        num_cpus: int | None = None,
    ) -> None:
        if not 1 <= n_nodes <= 200:
            raise ValueError(f"n_nodes must be 1..200, got {n_nodes}")
        ipaddress.IPv4Network(f"{subnet}.0/24")  # rejects a malformed subnet early
        self.subnet = subnet
        self.workdir = Path(workdir).resolve()
        self.env = dict(env or {})
        self.num_cpus = num_cpus
        self.prefix = f"rl{os.getpid() % 100000}x{next(_counter)}"
        self.bridge = f"{self.prefix}br"
        self.token = ""
        self.join_line: list[str] = []
        self.started = False
        self._closed = False
        self._built = False
        self.nodes: list[NetnsNode] = []
        for i in range(n_nodes):
            self.nodes.append(
                NetnsNode(
                    index=i,
                    name=f"node{i}",
                    ip=f"{subnet}.{i + 1}",
                    netns=f"{self.prefix}n{i}",
                    # Short on purpose: Ray's unix sockets live under it (108-byte limit).
                    root=Path(tempfile.mkdtemp(prefix=f"{self.prefix}n{i}-", dir="/tmp")),
                    host_veth=f"{self.prefix}v{i}",
                )
            )
        atexit.register(self.close)

    # ---- addresses and environment -------------------------------------------------
    @property
    def head_ip(self) -> str:
        return self.nodes[0].ip

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.254"

    @property
    def address(self) -> str:
        """GCS address of the cluster, ip:port."""
        return f"{self.head_ip}:{GCS_PORT}"

    def env_for(self, i: int) -> dict[str, str]:
        """What node i's processes get of their own: HOME and TMPDIR (plus this
        interpreter's bin directory first on PATH, where `pip install` puts `raylm`)."""
        n = self.nodes[i]
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {"HOME": str(n.home), "TMPDIR": str(n.tmp), "PATH": path, "PYTHONUNBUFFERED": "1"}
        return {**self.env, **env, **n.extra_env}

    # ---- processes -----------------------------------------------------------------
    def _ns_argv(self, i: int, argv: Sequence[str], cwd: str | None = None) -> list[str]:
        anchor = self.nodes[i].anchor
        if anchor is None:
            raise RuntimeError(f"node {i} is not built (call build() or start())")
        # Entering the mount namespace resets the working directory: name it again.
        wd = [f"--wd={cwd}"] if cwd else []
        return ["nsenter", "-t", str(anchor.pid), "--net", "--mount", *wd, "--", *map(str, argv)]

    def _full_env(self, i: int, env: dict[str, str] | None) -> dict[str, str]:
        return {**machine_base_env(), **self.env_for(i), **(env or {})}

    def run(
        self,
        i: int,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in node i's namespaces with env_for(i) (+ env); capture text output."""
        p = subprocess.Popen(
            self._ns_argv(i, argv),
            env=self._full_env(i, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.nodes[i].pids.add(p.pid)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(p.pid)
            out, err = p.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout, out, err) from None
        finally:
            self.nodes[i].pids.discard(p.pid)
        cp = subprocess.CompletedProcess(list(argv), p.returncode, out, err)
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, list(argv), out, err)
        return cp

    def popen(self, i: int, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start argv in node i's namespaces (own process group); stopped by kill_node/close."""
        env = self._full_env(i, kw.pop("env", None))
        kw.setdefault("start_new_session", True)
        argv = self._ns_argv(i, argv, kw.pop("cwd", None))
        p: subprocess.Popen[Any] = subprocess.Popen(argv, env=env, **kw)
        self.nodes[i].pids.add(p.pid)
        return p

    def raylm(
        self, i: int, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run `raylm ARGS` on node i."""
        return self.run(i, raylm_argv(*args), env=env, timeout=timeout)

    def ns_pids(self, i: int) -> list[int]:
        """Pids of every process in node i's network namespace, the anchor excluded."""
        n = self.nodes[i]
        p = subprocess.run(["ip", "netns", "pids", n.netns], capture_output=True, text=True)
        anchor = n.anchor.pid if n.anchor else -1
        return [int(x) for x in p.stdout.split() if x.strip() and int(x) != anchor]

    # ---- build / start -------------------------------------------------------------
    def build(self) -> None:
        """Create the bridge, namespaces, veths and anchors (no Ray yet)."""
        if self._built:
            return
        reason = netns_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        remove_orphans()
        check_subnet_free(self.subnet)
        self._built = True
        add_bridge(self.bridge, f"{self.bridge_ip}/24")
        for n in self.nodes:
            n.home.mkdir(parents=True, exist_ok=True)
            n.tmp.mkdir(parents=True, exist_ok=True)
            plug_node(n, self.bridge)
            start_anchor(n)

    def start(self, timeout: float = 240) -> None:
        """Build the nodes, run `raylm up` on node 0 as a user types it, then the join line it
        printed, verbatim, on every other node."""
        self.build()
        up = self.raylm(0, "up", *self._cpu_args(), timeout=timeout)
        if up.returncode != 0:
            raise RuntimeError(f"raylm up failed on node0:\n{up.stdout}\n{up.stderr}")
        self.join_line = printed_join_line(up.stdout)
        self.token = (self.nodes[0].raylm_home / "cluster" / "token").read_text().strip()
        for n in self.nodes[1:]:
            self.join_node(n.index, timeout=timeout)
        self.wait_alive(len(self.nodes), timeout=timeout)
        self.started = True

    def _cpu_args(self) -> list[str]:
        return [] if self.num_cpus is None else ["--num-cpus", str(self.num_cpus)]

    def join_node(self, i: int, *extra: str, timeout: float = 240) -> None:
        """Run the join line `raylm up` printed on node i (raises with its output on failure)."""
        n = self.nodes[i]
        p = self.join_cmd(i, *extra, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"raylm join failed on {n.name}:\n{p.stdout}\n{p.stderr}")

    def join_cmd(
        self, i: int, *extra: str, env: dict[str, str] | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        """Run the printed join line on node i (env and flags added); return the result."""
        if not self.join_line:
            raise RuntimeError("no join line yet: start() runs `raylm up` first")
        argv = [*raylm_argv(), *self.join_line[1:], *self._cpu_args(), *extra]
        return self.run(i, argv, env=env, timeout=timeout)

    def alive_node_ips(self, timeout: float = 120) -> list[str]:
        """IPs of the nodes `raylm status` on node 0 reports alive."""
        p = self.raylm(0, "status", "--json", timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"raylm status failed:\n{p.stderr[-2000:]}")
        nodes = json.loads(p.stdout)["nodes"]
        return sorted(n["ip"] for n in nodes if n["alive"])

    def wait_alive(self, n_alive: int, timeout: float = 120) -> list[str]:
        """Wait until Ray reports exactly n_alive nodes alive; return their IPs."""
        deadline = time.monotonic() + timeout
        ips: list[str] = []
        while True:
            try:
                ips = self.alive_node_ips()
                if len(ips) == n_alive:
                    return ips
            except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
                log.debug("waiting for nodes: %s", e)
            if time.monotonic() > deadline:
                raise RuntimeError(f"expected {n_alive} alive Ray nodes, saw {ips}")
            time.sleep(2)

    # ---- faults --------------------------------------------------------------------
    def kill_node(self, i: int) -> list[int]:
        """SIGKILL every process of node i (the ones in its namespace and the ones we started)."""
        n = self.nodes[i]
        pids = set(self.ns_pids(i)) | n.pids
        kill_pids(pids, signal.SIGKILL, 10)
        # A process forked between the listing and the kill would outlive a power cut.
        for _ in range(5):
            late = set(self.ns_pids(i)) - pids
            if not late:
                break
            kill_pids(late, signal.SIGKILL, 10)
            pids |= late
        n.pids.clear()
        return sorted(pids)

    def restart_node(self, i: int, *extra: str, extra_env: dict[str, str] | None = None) -> None:
        """Kill every process of node i, as a crash or reboot does, then run the same join
        line again (its files, `~/.raylm` included, stay as they were).

        extra_env (kept for later commands on that node) lets a test give the node e.g. a
        PYTHONPATH with different package metadata; extra flags go to `raylm join`.
        """
        if i == 0:
            raise ValueError("restarting the head is not supported: build a new cluster")
        self.kill_node(i)
        if extra_env is not None:
            self.nodes[i].extra_env = dict(extra_env)
        self.join_node(i, *extra)

    def cut_node(self, i: int) -> None:
        """Take node i off the network (its bridge port down)."""
        cut_link(self.nodes[i])

    def restore_node(self, i: int) -> None:
        """Put node i back on the network."""
        restore_link(self.nodes[i])

    def block_port(self, i: int, port: int) -> None:
        """Drop TCP connections from other hosts to node i's `port` (like a firewall DROP).

        A policy-routing rule refuses to route node i's replies from that port; loopback
        traffic inside the node is unaffected. (iproute2 only: no iptables/nft needed.)
        """
        block_tcp_port(self.nodes[i], port)

    def unblock_port(self, i: int, port: int) -> None:
        """Undo block_port."""
        unblock_tcp_port(self.nodes[i], port)

    def shrink_shm(self, i: int, size: str = "64m") -> None:
        """Mount a small tmpfs on node i's /dev/shm (the container default that breaks NCCL)."""
        p = self.run(i, ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", "/dev/shm"])
        if p.returncode != 0:
            raise RuntimeError(f"cannot mount a small /dev/shm on node {i}: {p.stderr}")

    def restore_shm(self, i: int) -> None:
        """Undo shrink_shm."""
        self.run(i, ["umount", "/dev/shm"])

    # ---- teardown ------------------------------------------------------------------
    def close(self) -> None:
        """Tear everything down, whatever state it is in. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        all_pids: set[int] = set()
        for n in self.nodes:
            if self._built:
                with contextlib.suppress(Exception):
                    all_pids |= set(self.ns_pids(n.index))
            all_pids |= n.pids
        kill_pids(all_pids, signal.SIGTERM, 8)
        kill_pids(all_pids, signal.SIGKILL, 5)
        for n in self.nodes:
            if n.anchor is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(n.anchor.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    n.anchor.wait(5)
            if self._built:
                unplug_node(n)
            shutil.rmtree(n.root, ignore_errors=True)
        if self._built:
            remove_bridge(self.bridge)

    def leftovers(self) -> list[str]:
        """What of this cluster still exists on the host (empty after close())."""
        out: list[str] = []
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for n in self.nodes:
            if n.netns in names:
                out.append(f"netns {n.netns}")
            if n.root.exists():
                out.append(f"dir {n.root}")
            for pid in n.pids:
                if pid_alive(pid):
                    out.append(f"pid {pid}")
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        for line in links.splitlines():
            name = line.split()[0].split("@")[0] if line.split() else ""
            if name.startswith(self.prefix):
                out.append(f"link {name}")
        return out

    def __enter__(self) -> NetnsCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
