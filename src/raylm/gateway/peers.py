"""The gateway workers of one port, seen from one of them (raylm.gateway.workers starts
them). A scrape of `/metrics` lands on whichever worker the kernel picked, so each worker
answers for all: it reads the others' metrics from their unix sockets and merges them,
each series labelled with its `worker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# A worker that does not answer this fast is left out of one scrape, not waited on.
_PEER_TIMEOUT_S = 2.0


def metrics_socket(rundir: Path, index: int) -> Path:
    """Where worker `index` serves its own metrics."""
    return rundir / f"metrics-{index}.sock"


class WorkerPeers:
    """Worker `index` of `count` sharing a port; its sockets live in `rundir`."""

    def __init__(self, rundir: Path, index: int, count: int) -> None:
        self.rundir = rundir
        self.index = index
        self.count = count
        self._server: asyncio.Server | None = None

    async def start(self, render: Callable[[], bytes]) -> None:
        """Serve this worker's own metrics (`render()`) to the other workers."""

        async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                writer.write(render())
                await writer.drain()
            writer.close()

        path = metrics_socket(self.rundir, self.index)
        path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(answer, path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def render_all(self, own: bytes) -> bytes:
        """Every worker's metrics in one exposition (a worker that cannot be read is left
        out of this one, and logged)."""
        others = [i for i in range(self.count) if i != self.index]
        texts = await asyncio.gather(*(self._read(i) for i in others))
        by_worker = {self.index: own} | {i: t for i, t in zip(others, texts, strict=True) if t}
        return merge_metrics(by_worker)

    async def _read(self, index: int) -> bytes:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(metrics_socket(self.rundir, index)), _PEER_TIMEOUT_S
            )
            try:
                return await asyncio.wait_for(reader.read(), _PEER_TIMEOUT_S)
            finally:
                writer.close()
        except (OSError, TimeoutError) as e:
            logger.warning("gateway worker %d's metrics could not be read: %s", index, e)
            return b""


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


# Series every worker reports alike (the controller's replica table and autoscaling; the
# engines' figures, which worker 0 alone reads): taken once, from the lowest worker
# answering, unlabelled.
_SHARED = ("raylm_replica_state", "raylm_replica_restarts", "raylm_model_ready_replicas")


def _shared(name: str) -> bool:
    return name in _SHARED or name.startswith(("raylm_engine_", "raylm_autoscale_"))


def merge_metrics(by_worker: dict[int, bytes]) -> bytes:
    """One exposition of several workers' own: each sample labelled `worker="<index>"`,
    but for the series all workers share, which appear once."""
    families: dict[str, Metric] = {}
    first = min(by_worker, default=0)
    for index, text in sorted(by_worker.items()):
        for family in text_string_to_metric_families(text.decode()):
            if _shared(family.name):
                if index == first:
                    families[family.name] = family
                continue
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples.extend(
                s._replace(labels={**s.labels, "worker": str(index)}) for s in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)
