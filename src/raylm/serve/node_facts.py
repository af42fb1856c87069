"""The cluster's nodes for the dashboard (`/dashboard/nodes`), as `raylm status` shows them.

Taking them runs a task on every node (up to 20 s when one is slow), so it runs on a thread
of its own, never the pool the health checks use, one take at a time however many pages
ask, and the answer is kept 15 s (a failure 5 s).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from raylm.cluster.inventory import NodeInventory, cluster_inventory

_KEEP_S = 15.0
_KEEP_FAILURE_S = 5.0


class NodeFacts:
    """The last take of the nodes, and the one in progress."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raylm-nodes")
        self._task: asyncio.Task[None] | None = None
        self._value: list[NodeInventory] | Exception | None = None
        self._at = 0.0

    async def get(self) -> list[NodeInventory]:
        keep = _KEEP_FAILURE_S if isinstance(self._value, Exception) else _KEEP_S
        if self._value is None or time.monotonic() - self._at > keep:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._take())
            await asyncio.shield(self._task)  # a caller that gives up leaves it running
        if isinstance(self._value, Exception):
            raise self._value
        assert self._value is not None
        return self._value

    async def _take(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            inventory = await loop.run_in_executor(
                self._pool, lambda: cluster_inventory(timeout=20)
            )
            self._value = inventory.nodes
        except Exception as e:  # kept briefly: a failing cluster is not asked again at once
            self._value = e
        self._at = time.monotonic()  # when it ended: a slow take is not stale at once
