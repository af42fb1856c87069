"""What the gateway says about itself: `/` (every replica's state), `/health` (ready,
degraded, unavailable or draining) and `/metrics` (Prometheus)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from raylm import __version__
from raylm.gateway import metrics as gm
from raylm.gateway.responses import json_response

if TYPE_CHECKING:
    from raylm.gateway.app import Gateway


class InfoRoutes:
    """`/`, `/health` and `/metrics`."""

    def __init__(self, gateway: Gateway, started_at: float) -> None:
        self.gateway = gateway
        self.up = gateway.upstream
        self.started_at = started_at

    async def root(self, request: Request) -> Response:
        table = self.up.table
        replicas = [
            {
                "replica_id": r.replica_id,
                "model": r.model,
                "node": r.node,
                "nodes": r.nodes,
                "state": r.state.value,
                "routable": table.is_routable(r),
                "in_flight": table.in_flight(r.replica_id),
                "restarts": r.restarts,
                "detail": r.detail,
            }
            for r in table.replicas
        ]
        peers = self.gateway.peers
        return json_response(
            {
                "name": "raylm",
                "version": __version__,
                "worker": peers.index if peers else 0,
                "workers": peers.count if peers else 1,
                "uptime_s": round(time.time() - self.started_at, 3),
                "draining": self.up.draining,
                "models": [
                    {"model": s.model, "ready_replicas": s.ready, "replicas": s.total}
                    for s in table.status()
                ],
                "replicas": replicas,
            }
        )

    async def health(self, request: Request) -> Response:
        status = self.up.table.status()
        models = {s.model: {"ready": s.ready, "replicas": s.total} for s in status}
        headers = {"Retry-After": str(self.up.settings.retry_after_s)}
        if self.up.draining:
            return json_response(
                {"status": "draining", "message": "The gateway is draining.", "models": models},
                503,
                headers,
            )
        missing = [s.model for s in status if s.ready == 0]
        if not status or missing:
            message = (
                "No replica is known yet."
                if not status
                else "No ready replica for: " + "; ".join(self.up.table.unready(m) for m in missing)
            )
            return json_response(
                {"status": "unavailable", "message": message, "missing": missing, "models": models},
                503,
                headers,
            )
        # Still serving (200), but say so when a model runs on fewer replicas than asked.
        degraded = [s.model for s in status if s.ready < s.total]
        if degraded:
            return json_response({"status": "degraded", "degraded": degraded, "models": models})
        return json_response({"status": "ok", "models": models})

    async def metrics(self, request: Request) -> Response:
        text = self.up.metrics.render()
        if self.gateway.peers is not None:
            text = await self.gateway.peers.render_all(text)
        return Response(text, media_type=gm.CONTENT_TYPE)
