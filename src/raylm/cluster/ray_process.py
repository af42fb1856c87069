"""The one module that runs `ray start` and stops what it started, by process id.

`ray stop` kills every Ray process of the machine by name, including clusters other
users run on the same host; raylm instead marks the environment of the processes it
starts with a run id and stops exactly the processes that carry it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from raylm.cluster.ports import RayPorts
from raylm.errors import ClusterError

log = logging.getLogger(__name__)

RUN_MARKER = "RAYLM_RAY_RUN"
# Ray's auth settings: raylm may set them in its own process (to talk to the GCS), but a
# node's Ray processes get theirs from `env` only (a token path, never the token).
RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ray_executable() -> list[str]:
    """How to run Ray's CLI from the Python environment raylm runs in: its `ray` script, or
    the same CLI as a module where Ray was installed without scripts (a `--target` dir)."""
    exe = Path(sys.executable).parent / "ray"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ray")
    if found:
        return [found]
    if importlib.util.find_spec("ray") is not None:
        return [sys.executable, "-m", "ray.scripts.scripts"]
    raise ClusterError(
        "Ray is not installed in this environment",
        fix="Install Ray in the environment that runs raylm",
        command="pip install 'ray[default]'",
    )


def ray_start_argv(
    *,
    head: bool,
    node_ip: str,
    ports: RayPorts,
    temp_dir: Path,
    num_cpus: int | None,
    num_gpus: int | None,
    head_address: str | None = None,
    dashboard_host: str = "127.0.0.1",
    resources: str | None = None,
) -> list[str]:
    """The full `ray start` command line for this node."""
    argv = [*ray_executable(), "start", f"--node-ip-address={node_ip}"]
    if head:
        argv += [
            "--head",
            f"--port={ports.gcs}",
            f"--dashboard-host={dashboard_host}",
            f"--dashboard-port={ports.dashboard}",
            f"--ray-client-server-port={ports.ray_client}",
            f"--temp-dir={temp_dir}",
        ]
    else:
        argv += [f"--address={head_address}"]
    argv += [
        f"--object-manager-port={ports.object_manager}",
        f"--node-manager-port={ports.node_manager}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--metrics-export-port={ports.metrics_export}",
        f"--min-worker-port={ports.min_worker}",
        f"--max-worker-port={ports.max_worker}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        argv.append(f"--num-gpus={num_gpus}")
    if resources:
        argv.append(f"--resources={resources}")
    return argv


# Ray gives its raylet a hard-coded 30 s to register with the GCS; on a loaded machine
# (measured: a worker rejoining while two vLLM engines load on 2 cores) that can pass.
_STARTUP_TIMEOUT = "timed out during startup"


def start_ray(
    argv: list[str], env: dict[str, str], temp_dir: Path, *, timeout: float = 180.0
) -> tuple[str, str]:
    """Run `ray start` with `env` added to ours; return (run id, its output).

    The run id is put in the environment of every process Ray starts (they inherit it),
    which is how `processes_of_run` finds them later. A start that ran out of Ray's own
    registration time is cleaned up and tried again, up to three times in all, while
    `timeout` allows.
    """
    deadline = time.monotonic() + timeout
    run_id, p = _start_once(argv, env, timeout)
    for attempt in (2, 3):
        left = deadline - time.monotonic()
        if p.returncode == 0 or _STARTUP_TIMEOUT not in (p.stdout or "") + (p.stderr or ""):
            break
        if left < 35:  # another try could not outlast Ray's own 30 s window
            break
        stop_run(run_id)
        log.warning(
            "`ray start` ran out of Ray's 30 s registration time (the node is busy); "
            "trying again (%d of 3)",
            attempt,
        )
        run_id, p = _start_once(argv, env, left)
    out = (p.stdout or "") + (p.stderr or "")
    if p.returncode != 0:
        stop_run(run_id)
        tail = "\n".join(out.strip().splitlines()[-8:])
        if _STARTUP_TIMEOUT in out:
            said = raylet_log_tail(temp_dir)
            raise ClusterError(
                "`ray start` failed: this node's raylet did not register with the GCS in time",
                why="Ray allows 30 s for it; the node or the head's GCS was too busy, "
                "every time it was tried" + (f". The raylet's last words:\n{said}" if said else ""),
                fix="Run the same command again once the node is less busy; the raylet's "
                "log is raylet.out under the Ray temp dir's session_latest/logs",
                command="raylm doctor",
            )
        raise ClusterError(
            "`ray start` failed",
            why=f"exit {p.returncode}: {tail}",
            fix="Free the ports raylm uses (see `raylm up --help`) or stop the old cluster",
            command="raylm down",
        )
    return run_id, out


def raylet_log_tail(temp_dir: Path, lines: int = 6) -> str:
    """The last lines the latest session's raylet wrote (its errors first), or ""."""
    logs = temp_dir / "session_latest" / "logs"
    for name in ("raylet.err", "raylet.out"):
        try:
            text = (logs / name).read_text(errors="replace")
        except OSError:
            continue
        kept = [line for line in text.splitlines() if line.strip()]
        if kept:
            return "\n".join(f"  {line[:300]}" for line in kept[-lines:])
    return ""


def _start_once(
    argv: list[str], env: dict[str, str], timeout: float
) -> tuple[str, subprocess.CompletedProcess[str]]:
    run_id = uuid.uuid4().hex
    inherited = {k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARS}
    full = {**inherited, **env, RUN_MARKER: run_id}
    log.debug("starting: %s", " ".join(argv))
    try:
        p = subprocess.run(
            argv, env=full, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        stop_run(run_id)
        raise ClusterError(
            f"`ray start` did not finish in {timeout:.0f} s",
            why="the node is overloaded or a port is held by another process",
            fix="Check the log under the node's Ray temp dir, then retry",
            command="raylm down && raylm doctor",
        ) from e
    return run_id, p


def _marked(p: psutil.Process, run_id: str) -> bool:
    try:
        return bool(p.environ().get(RUN_MARKER) == run_id)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def processes_of_run(run_id: str) -> list[psutil.Process]:
    """Every live process whose environment carries this run id, and their descendants.

    Descendants count because some Ray daemons (the dashboard and runtime-env agents)
    rename themselves with setproctitle, which overwrites their environment block.
    """
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid"]):
        if _marked(p, run_id):
            found[p.pid] = p
    for p in list(found.values()):
        try:
            for ch in p.children(recursive=True):
                found.setdefault(ch.pid, ch)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def snapshot(procs: list[psutil.Process]) -> list[tuple[int, float]]:
    """(pid, create time) of each process: a pid alone may be reused after it exits."""
    out = []
    for p in procs:
        try:
            out.append((p.pid, p.create_time()))
        except psutil.NoSuchProcess:
            continue
    return out


def stop_run(
    run_id: str, *, recorded: list[tuple[int, float]] | None = None, grace: float = 10.0
) -> list[int]:
    """Stop the processes of one run: found by marker and descent, plus recorded ones.

    SIGTERM first so Ray flushes its state, SIGKILL after `grace` seconds. Returns the pids
    that were signalled.
    """
    procs = {p.pid: p for p in processes_of_run(run_id)}
    for pid, ctime in recorded or []:
        if pid in procs:
            continue
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - ctime) < 0.01:
                procs[pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    # Workers forked while we were stopping carry the marker too.
    late = [p for p in processes_of_run(run_id) if p.pid not in procs]
    for p in late:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(late, timeout=5)
    return sorted(set(procs) | {p.pid for p in late})


def wait_port(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connect to host:port succeeds within `timeout` seconds."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.3)
