"""One gateway worker besides worker 0 (raylm.gateway.workers starts it):
`python -m raylm.gateway.worker`, its WorkerSpec on stdin. It serves the shared port until
SIGTERM, then drains as worker 0 does. It also stops when worker 0 is gone, so a killed
`raylm serve` leaves no gateway behind on its port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from raylm.autoscaling import AutoscaleStatus, LoadReport
from raylm.gateway.app import create_gateway
from raylm.gateway.events import EventFeed
from raylm.gateway.heap import settle_heap
from raylm.gateway.peers import WorkerPeers
from raylm.gateway.server import GatewayServer
from raylm.gateway.workers import READY, RELAY, RELAY_LINE_LIMIT, WorkerSpec
from raylm.kv.blocks import BlockCursor, BlockDelta
from raylm.operations import (
    AddRequest,
    AutoscaleRequest,
    DeploymentView,
    RemoveRequest,
    ScaleRequest,
    ScaleResult,
    UpdateRequest,
    UpdateResult,
)
from raylm.replica import ReplicaInfo

if TYPE_CHECKING:
    from raylm.cluster.inventory import NodeInventory

logger = logging.getLogger("raylm.gateway.worker")

_ANSWER_TIMEOUT_S = 10.0


_ADMIN_TIMEOUT_S = 120.0
"""An admin change through worker 0: planning a model and the controller's answer."""


class _Line:
    """One connection to worker 0's relay, one question at a time."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.lock = asyncio.Lock()
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None


class RelaySource:
    """The replica table and cache changes, read through worker 0 (one question at a
    time on one connection, opened again after a failure)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lines = {"table": _Line(_ANSWER_TIMEOUT_S), "admin": _Line(_ADMIN_TIMEOUT_S)}
        self._sending: set[asyncio.Task[dict[str, Any]]] = set()

    async def _ask(self, question: dict[str, Any], line_name: str = "table") -> dict[str, Any]:
        # Admin changes (a model planned and started) take long: on a line of their own,
        # they never hold up this worker's reads of the replica table.
        ln = self._lines[line_name]
        async with ln.lock:
            if ln.conn is None:
                ln.conn = await asyncio.open_unix_connection(self._path, limit=RELAY_LINE_LIMIT)
            reader, writer = ln.conn
            try:
                writer.write(json.dumps(question).encode() + b"\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), ln.timeout_s)
                if not line:
                    raise ConnectionError("worker 0 closed the relay")
            except BaseException:
                writer.close()
                ln.conn = None
                raise
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    async def snapshot(self) -> list[ReplicaInfo]:
        rows = (await self._ask({"op": "snapshot"}))["replicas"]
        return [ReplicaInfo.model_validate(r) for r in rows]

    async def kv_deltas(self, cursors: dict[str, BlockCursor]) -> dict[str, BlockDelta]:
        question = {"op": "kv_deltas", "cursors": {k: c.model_dump() for k, c in cursors.items()}}
        deltas = (await self._ask(question))["deltas"]
        return {k: BlockDelta.model_validate(d) for k, d in deltas.items()}

    async def report_load(self, report: LoadReport) -> list[AutoscaleStatus]:
        question = {"op": "load", "report": report.model_dump()}
        statuses = (await self._ask(question))["statuses"]
        return [AutoscaleStatus.model_validate(x) for x in statuses]

    async def autoscale(self, request: AutoscaleRequest) -> ScaleResult:
        question = {"op": "autoscale", "request": request.model_dump()}
        return ScaleResult.model_validate((await self._ask(question, "admin"))["result"])

    async def deployment(self) -> DeploymentView:
        view = (await self._ask({"op": "deployment"}, "admin"))["view"]
        return DeploymentView.model_validate(view)

    async def events(self, since: int) -> EventFeed:
        return EventFeed.model_validate(await self._ask({"op": "events", "since": since}))

    def forward_event(self, kind: str, replica: str, message: str) -> None:
        """Send one event to worker 0's feed; not awaited (a failover must not wait)."""
        question = {"op": "event", "kind": kind, "replica": replica, "message": message}
        task = asyncio.get_running_loop().create_task(self._ask(question))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def nodes(self) -> list[NodeInventory]:
        from raylm.cluster.inventory import NodeInventory  # only when the dashboard asks

        rows = (await self._ask({"op": "nodes"}, "admin"))["nodes"]
        return [NodeInventory.model_validate(r) for r in rows]

    async def scale(self, request: ScaleRequest) -> ScaleResult:
        question = {"op": "scale", "request": request.model_dump()}
        return ScaleResult.model_validate((await self._ask(question, "admin"))["result"])

    async def update(self, request: UpdateRequest) -> UpdateResult:
        question = {"op": "update", "request": request.model_dump()}
        return UpdateResult.model_validate((await self._ask(question, "admin"))["result"])

    async def add(self, request: AddRequest) -> ScaleResult:
        question = {"op": "add", "request": request.model_dump()}
        return ScaleResult.model_validate((await self._ask(question, "admin"))["result"])

    async def remove(self, request: RemoveRequest) -> ScaleResult:
        question = {"op": "remove", "request": request.model_dump()}
        return ScaleResult.model_validate((await self._ask(question, "admin"))["result"])


async def serve(spec: WorkerSpec) -> bool:
    """Serve until SIGTERM or worker 0's end; True when every request in flight finished."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    rundir = Path(spec.rundir)
    peers = WorkerPeers(rundir, spec.index, spec.count)
    relay = RelaySource(rundir / RELAY)
    gateway = create_gateway(relay, spec.gateway_settings())
    gateway.upstream.events.forward = relay.forward_event
    gateway.peers = peers
    server = GatewayServer(gateway, spec.host, spec.port, reuse_port=True)
    await server.start()
    await peers.start(gateway.metrics.render)
    settle_heap()
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    os.dup2(2, 1)  # worker 0 reads no more of that pipe: anything printed goes to the log
    while not stop.is_set():
        if os.getppid() != spec.parent_pid:
            logger.warning("gateway worker %d: worker 0 is gone; stopping", spec.index)
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    try:
        return await server.stop()
    finally:
        await peers.stop()


def main() -> None:
    # Ctrl-C in the terminal reaches the whole process group; worker 0 decides, and
    # stops this worker with SIGTERM after its own drain began.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spec = WorkerSpec.model_validate_json(sys.stdin.buffer.read())
    drained = uvloop.run(serve(spec))
    sys.exit(0 if drained else 3)


if __name__ == "__main__":
    main()
