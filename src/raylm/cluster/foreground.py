"""`raylm up --block` / `join --block`: stay in the foreground while this node's Ray runs,
as a container's main process must (its exit stops the container, and with it Ray), and
stop the node on SIGTERM/SIGINT as `raylm down` does.

In a container whose first process is raylm itself (no init), blocking is the only useful
mode, so it is chosen there without the flag."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import psutil

from raylm.cluster import bringup, ray_process
from raylm.cluster.container import in_container
from raylm.cluster.record import NodeState
from raylm.errors import ClusterError

POLL_S = 2.0


INITS = ("tini", "docker-init", "catatonit", "dumb-init")
"""The small inits `docker run --init` and `podman run --init` put before the command."""


def first_in_container() -> bool:
    """Whether raylm is a container's command: its first process, or right under its init.
    (`docker exec` runs are not: their parent is outside the container.)"""
    if not in_container():
        return False
    if os.getpid() == 1:
        return True
    try:
        return os.getppid() == 1 and psutil.Process(1).name() in INITS
    except psutil.Error:
        return False


def must_block(asked: bool) -> bool:
    """--block as given, or on when raylm is a container's command."""
    return asked or first_in_container()


def _reap() -> None:
    """As a container's first process, collect the exited Ray daemons it inherited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _raylet(state: NodeState) -> psutil.Process:
    for p in ray_process.processes_of_run(state.run_id):
        try:
            if p.name() == "raylet":
                return p
        except psutil.NoSuchProcess:
            continue
    raise ClusterError(
        "Ray's raylet is not running on this node right after it started",
        why="it exited at once; its log says why",
        fix=f"Read {state.temp_dir}/session_latest/logs/raylet.out",
    )


def hold(state: NodeState) -> str:
    """Block until SIGTERM/SIGINT (returns the signal's name) or until this node's raylet
    exits (ClusterError: the container should stop and be restarted)."""
    raylet = _raylet(state)
    stop = threading.Event()
    got: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        got.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(POLL_S):
            if os.getpid() == 1:
                _reap()
            if not raylet.is_running() or raylet.status() == psutil.STATUS_ZOMBIE:
                raise ClusterError(
                    "Ray stopped on this node",
                    why=f"its raylet (pid {raylet.pid}) exited",
                    fix=f"Read {state.temp_dir}/session_latest/logs/raylet.out, then start "
                    "the node again",
                )
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return got[0]


def hold_then_stop(state: NodeState) -> tuple[str, list[int]]:
    """`hold`, then stop this node however the hold ended: (the signal's name, the pids
    stopped); a dead raylet's ClusterError still propagates, after the stop."""
    try:
        why = hold(state)
    finally:
        pids = bringup.down()
    return why, pids
