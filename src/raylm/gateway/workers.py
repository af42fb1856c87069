"""More gateway processes on the same port, for more cores (`gateway_workers`).

The process that serves the deployment is worker 0 and starts workers 1..N-1
(`python -m raylm.gateway.worker`). Each binds the port with SO_REUSEPORT, so the kernel
spreads new connections over them. None of them asks the controller itself: they read the
replica table, and kv-aware routing's cache changes, through worker 0's own source over a
unix socket (the relay). So every worker routes over the same replicas, and kv-aware over
the same engine-reported caches; only the counts of requests in flight are each worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from raylm.autoscaling import LoadReport
from raylm.errors import ConfigError
from raylm.gateway.admin_routes import Operator
from raylm.gateway.events import EventLog
from raylm.gateway.keys import ClientKey
from raylm.gateway.kv_index import BlockSource
from raylm.gateway.settings import GatewaySettings
from raylm.gateway.source import LoadSink, NodeSource, ReplicaSource
from raylm.kv.blocks import BlockCursor
from raylm.operations import (
    AddRequest,
    AutoscaleRequest,
    RemoveRequest,
    ScaleRequest,
    UpdateRequest,
)

logger = logging.getLogger(__name__)

RELAY = "relay.sock"
READY = b"ready\n"
# Relay lines carry kv-aware's cache changes, which can be large after a replica restart.
RELAY_LINE_LIMIT = 64 * 2**20
_START_TIMEOUT_S = 60.0


def default_workers() -> int:
    """Gateway processes for this node when not told: one per 8 cores, 1 to 4. The
    engines and Ray need the node's cores too, and one worker serves over a thousand
    requests a second (benchmarks/bench_gateway_capacity.py)."""
    return max(1, min(4, (os.cpu_count() or 1) // 8))


class WorkerSpec(BaseModel):
    """What worker 0 tells a worker it starts (on its stdin: the keys never show in `ps`
    nor in the process environment)."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=1, description="This worker's number; worker 0 is the parent.")
    parent_pid: int = Field(description="Worker 0's process id: the worker stops without it.")
    count: int = Field(ge=2, description="Workers on the port, the parent included.")
    host: str = Field(description="The address the gateway listens on.")
    port: int = Field(ge=1, le=65535, description="The port all workers share.")
    rundir: str = Field(description="Directory of the relay and metrics sockets (mode 0700).")
    settings: dict[str, Any] = Field(description="The GatewaySettings, keys left out.")
    api_key: str | None = Field(description="The clients' API key, if any.")
    admin_key: str | None = Field(default=None, description="The admin key, if any.")
    upstream_api_key: str | None = Field(description="The key presented to replicas, if any.")
    api_keys: list[dict[str, Any]] = Field(
        default_factory=list, description="The named client keys, their values in clear."
    )

    def gateway_settings(self) -> GatewaySettings:
        def secret(value: str | None) -> SecretStr | None:
            return SecretStr(value) if value is not None else None

        return GatewaySettings(
            **self.settings,
            api_key=secret(self.api_key),
            admin_key=secret(self.admin_key),
            upstream_api_key=secret(self.upstream_api_key),
            api_keys=[ClientKey(**k) for k in self.api_keys],
        )


_OPERATIONS = ("deployment", "scale", "update", "autoscale", "add", "remove")
"""The admin changes worker 0 relays to the operator."""


class Relay:
    """Worker 0's side of the relay: answers the workers' reads of the source, one JSON
    line per question."""

    def __init__(self, source: ReplicaSource, events: EventLog) -> None:
        self.source = source
        self.events = events

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a worker that stopped; it reconnects if it comes back
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            question = json.loads(line)
            if question.get("op") == "snapshot":
                rows = await self.source.snapshot()
                return {"replicas": [r.model_dump(mode="json") for r in rows]}
            if question.get("op") == "kv_deltas":
                if not isinstance(self.source, BlockSource):
                    return {"deltas": {}}
                cursors = {k: BlockCursor.model_validate(v) for k, v in question["cursors"].items()}
                deltas = await self.source.kv_deltas(cursors)
                return {"deltas": {k: d.model_dump(mode="json") for k, d in deltas.items()}}
            if question.get("op") == "load":
                if not isinstance(self.source, LoadSink):
                    return {"statuses": []}
                report = LoadReport.model_validate(question["report"])
                statuses = await self.source.report_load(report)
                return {"statuses": [x.model_dump(mode="json") for x in statuses]}
            if question.get("op") == "events":
                return self.events.feed(int(question["since"])).model_dump(mode="json")
            if question.get("op") == "event":
                self.events.add(question["kind"], question["replica"], question["message"])
                return {}
            if question.get("op") == "nodes":
                if not isinstance(self.source, NodeSource):
                    return {"nodes": []}
                return {"nodes": [n.model_dump(mode="json") for n in await self.source.nodes()]}
            if question.get("op") in _OPERATIONS:
                return await self._operate(question)
            return {"error": f"unknown question {question.get('op')!r}"}
        except Exception as e:  # the worker keeps its last table, as worker 0 would
            return {"error": f"{type(e).__name__}: {e}"}

    async def _operate(self, question: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(self.source, Operator):
            return {"error": "this gateway does not run a deployment"}
        op = question["op"]
        if op == "deployment":
            return {"view": (await self.source.deployment()).model_dump(mode="json")}
        asked = question["request"]
        result: BaseModel
        if op == "scale":
            result = await self.source.scale(ScaleRequest.model_validate(asked))
        elif op == "update":
            result = await self.source.update(UpdateRequest.model_validate(asked))
        elif op == "autoscale":
            result = await self.source.autoscale(AutoscaleRequest.model_validate(asked))
        elif op == "add":
            result = await self.source.add(AddRequest.model_validate(asked))
        else:
            result = await self.source.remove(RemoveRequest.model_validate(asked))
        return {"result": result.model_dump(mode="json")}


class WorkerProcesses:
    """Workers 1..N-1 of a gateway: started, restarted when one dies, stopped by draining."""

    def __init__(
        self,
        settings: GatewaySettings,
        source: ReplicaSource,
        events: EventLog,
        host: str,
        port: int,
        count: int,
    ) -> None:
        self.rundir = Path(tempfile.mkdtemp(prefix="raylm-gw-"))  # mode 0700
        secret = settings.api_key, settings.upstream_api_key
        admin = settings.admin_key
        # Worker 0 alone reads the engines' figures: the others' would repeat them on
        # /metrics, N times over in a sum, for nothing routing uses.
        shared = settings.model_dump(
            mode="json", exclude={"api_key", "upstream_api_key", "api_keys", "admin_key"}
        )
        keys = [
            {**k.model_dump(mode="json"), "key": k.key.get_secret_value()}
            for k in settings.api_keys
        ]
        shared["engine_scrape_interval_s"] = 0
        self.drain_timeout_s = settings.drain_timeout_s
        self._specs = [
            WorkerSpec(
                index=i,
                parent_pid=os.getpid(),
                count=count,
                host=host,
                port=port,
                rundir=str(self.rundir),
                settings=shared,
                api_key=secret[0].get_secret_value() if secret[0] else None,
                upstream_api_key=secret[1].get_secret_value() if secret[1] else None,
                api_keys=keys,
                admin_key=admin.get_secret_value() if admin else None,
            )
            for i in range(1, count)
        ]
        self._relay = Relay(source, events)
        self._relay_server: asyncio.Server | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (worker 0 not included)."""
        return [p.pid for p in self._procs.values()]

    async def start(self) -> None:
        """Start every worker; return once each listens (or raise ConfigError)."""
        self._relay_server = await asyncio.start_unix_server(
            self._relay.serve, self.rundir / RELAY, limit=RELAY_LINE_LIMIT
        )
        await asyncio.gather(*(self._spawn(spec) for spec in self._specs))
        self._watcher = asyncio.create_task(self._watch(), name="raylm-gateway-workers")

    async def _spawn(self, spec: WorkerSpec) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raylm.gateway.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._procs[spec.index] = proc
        self._started[spec.index] = time.monotonic()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec.model_dump_json().encode())
        proc.stdin.close()
        stdout = proc.stdout
        try:
            line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), _START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if line == READY:
            stdout.close()  # the worker writes nothing more there (its stdout is its stderr)
        else:
            proc.kill()  # also ends a readline still waiting in its thread
            await asyncio.to_thread(proc.wait)
            stdout.close()
            raise ConfigError(
                f"Gateway worker {spec.index} did not start (exit {proc.poll()})",
                why="its own error is in the log above",
                fix="Run with --gateway-workers 1 to serve from this process alone",
            )

    async def _watch(self) -> None:
        """Start again a worker that died (it takes its share of connections with it); one
        that keeps dying soon after its start waits longer each time, up to a minute."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            for spec in self._specs:
                i = spec.index
                proc = self._procs[i]
                if proc.poll() is None or self._stopping:
                    continue
                lived = time.monotonic() - self._started[i]
                wait = min(60.0, 2 * self._backoff.get(i, 0.5)) if lived < 30 else 0.0
                self._backoff[i] = wait
                logger.warning(
                    "gateway worker %d exited (%s) after %.0f s; starting it again in %.0f s",
                    i,
                    proc.returncode,
                    lived,
                    wait,
                )
                await asyncio.sleep(wait)
                with contextlib.suppress(Exception):
                    await self._spawn(spec)

    async def stop(self, timeout_s: float) -> bool:
        """SIGTERM every worker (each drains up to its own drain_timeout_s, then exits);
        kill what is left after that or `timeout_s`, whichever is longer, and 10 s more.
        True when every worker drained."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + max(timeout_s, self.drain_timeout_s) + 10
        drained = True
        for index, proc in self._procs.items():
            left = max(0.1, deadline - time.monotonic())
            try:
                code = await asyncio.to_thread(proc.wait, left)
            except subprocess.TimeoutExpired:
                logger.warning("gateway worker %d did not stop in time; killing it", index)
                proc.kill()
                code = await asyncio.to_thread(proc.wait)
            drained = drained and code == 0
            if proc.stdout is not None:
                proc.stdout.close()
        if self._relay_server is not None:
            self._relay_server.close()
        shutil.rmtree(self.rundir, ignore_errors=True)
        return drained
