"""One machine of a NetnsCluster: a network namespace with its own HOME and TMPDIR.

Owns what a machine is (`NetnsNode`), the environment a separate machine would have
(`machine_base_env`), the command lines a user types on it (`raylm_argv`, the printed join
line), its anchor process (whose namespaces every process of the machine enters) and the
pid helpers that stop its processes (by pid only, never by name).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def raylm_argv(*args: str) -> list[str]:
    """The command line that runs `raylm ARGS` with this interpreter."""
    return [sys.executable, "-m", "raylm.cli.main", *args]


def printed_join_line(up_output: str) -> list[str]:
    """The `raylm join ...` line `raylm up` printed, as a user would copy it."""
    lines = [ln.strip() for ln in up_output.splitlines() if ln.strip().startswith("raylm join ")]
    if not lines:
        raise RuntimeError(f"`raylm up` printed no join line:\n{up_output}")
    return shlex.split(lines[-1])


@dataclass
class NetnsNode:
    """One node of a NetnsCluster: a machine with its own network, HOME and TMPDIR."""

    index: int
    name: str
    ip: str
    netns: str
    root: Path
    host_veth: str
    anchor: subprocess.Popen[bytes] | None = None
    pids: set[int] = field(default_factory=set)
    blocked_ports: set[int] = field(default_factory=set)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """The machine's HOME."""
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        """The machine's TMPDIR."""
        return self.root / "tmp"

    @property
    def raylm_home(self) -> Path:
        """Where raylm keeps this machine's state by default: `~/.raylm`."""
        return self.home / ".raylm"


# Variables a test runner may carry that a fresh machine does not have: they must never
# reach a namespace machine, or the harness would do raylm's work for it.
_FOREIGN_PREFIXES = ("RAY_", "RAYLM_", "VLLM_", "NCCL_", "GLOO_", "HF_", "OMP_")


def machine_base_env() -> dict[str, str]:
    """This process's environment less everything a separate machine would not share."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}


def start_anchor(n: NetnsNode) -> None:
    """Start node n's anchor process; return once it is in the node's network namespace."""
    # `ip netns exec` gives the anchor a fresh mount namespace (slave of the host's),
    # with /sys showing the node's own interfaces.
    n.anchor = subprocess.Popen(
        ["ip", "netns", "exec", n.netns, "sleep", "infinity"], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            own = os.readlink(f"/proc/{n.anchor.pid}/ns/net")
            if own != os.readlink("/proc/self/ns/net"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"anchor of {n.netns} did not enter its namespace")


def pid_alive(pid: int) -> bool:
    """Whether pid still runs (a zombie does not; one that is our child is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes: reap it.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def wait_gone(pids: set[int], timeout: float) -> None:
    """Wait up to `timeout` seconds for every pid to be gone."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def kill_pids(pids: set[int], sig: signal.Signals, timeout: float) -> None:
    """Send `sig` to every pid (the ones already gone skipped), then wait up to `timeout`
    seconds for them all to be gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    wait_gone(pids, timeout)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by pid (started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
