"""The gateway's view of the replicas, read from the controller actor."""

from __future__ import annotations

import asyncio
from typing import Any

from raylm.autoscaling import AutoscaleStatus, LoadReport
from raylm.cluster.inventory import NodeInventory
from raylm.kv.blocks import BlockCursor, BlockDelta
from raylm.operations import (
    AutoscaleRequest,
    DeploymentView,
    ScaleRequest,
    ScaleResult,
    UpdateRequest,
    UpdateResult,
)
from raylm.replica import ReplicaInfo


class ControllerReplicaSource:
    """Reads the replica table, and the replicas' cache changes for kv-aware routing, from a
    controller actor (awaitable Ray calls); and is the admin routes' operator."""

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

    async def deployment(self) -> DeploymentView:
        view: DeploymentView = await asyncio.wait_for(self._controller.deployment.remote(), 10.0)
        return view

    async def nodes(self) -> list[NodeInventory]:
        # Each node answers a task of its own; a slow one is waited for up to 20 s there.
        rows: list[NodeInventory] = await asyncio.wait_for(self._controller.nodes.remote(), 30.0)
        return rows

    async def scale(self, request: ScaleRequest) -> ScaleResult:
        result: ScaleResult = await asyncio.wait_for(
            self._controller.scale.remote(request.model, request.replicas), 30.0
        )
        return result

    async def report_load(self, report: LoadReport) -> list[AutoscaleStatus]:
        statuses: list[AutoscaleStatus] = await asyncio.wait_for(
            self._controller.report_load.remote(report), 5.0
        )
        return statuses

    async def autoscale(self, request: AutoscaleRequest) -> ScaleResult:
        result: ScaleResult = await asyncio.wait_for(
            self._controller.set_autoscaling.remote(request.model, request.autoscaling), 30.0
        )
        return result

    async def update(self, request: UpdateRequest) -> UpdateResult:
        result: UpdateResult = await asyncio.wait_for(self._controller.update.remote(request), 30.0)
        return result
