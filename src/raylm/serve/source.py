"""The gateway's view of the replicas, read from the controller actor."""

from __future__ import annotations

import asyncio
from typing import Any

from raylm.kv.blocks import BlockCursor, BlockDelta
from raylm.replica import ReplicaInfo


class ControllerReplicaSource:
    """Reads the replica table, and the replicas' cache changes for kv-aware routing, from a
    controller actor (awaitable Ray calls)."""

    def __init__(self, controller: Any) -> None:
        self._controller = controller

    async def snapshot(self) -> list[ReplicaInfo]:
        # Bounded: a stuck call must not freeze the gateway's view of the replicas.
        rows: list[ReplicaInfo] = await asyncio.wait_for(
            self._controller.replica_infos.remote(), 5.0
        )
        return rows

    async def kv_deltas(self, cursors: dict[str, BlockCursor]) -> dict[str, BlockDelta]:
        deltas: dict[str, BlockDelta] = await asyncio.wait_for(
            self._controller.kv_deltas.remote(cursors), 5.0
        )
        return deltas
