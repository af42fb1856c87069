"""The dashboard: `/dashboard`, a page of static files in the package (no build step; the
charts are uPlot's, vendored from npm with its license in dashboard/vendor/), and the two
feeds only it reads: `/dashboard/events` (raylm.gateway.events) and `/dashboard/nodes`
(every node, as `raylm status` shows it).

The page and its files hold no data, so a browser loads them without a key; every figure it
shows comes from `/`, `/metrics` and the events feed, which need the API key (or the admin
key) when one is set, and the nodes (addresses, versions), which need the admin key when
one is set. The page asks for the key, or takes it from the URL's fragment
(`/dashboard#key=...`: browsers never send the fragment, so no log sees it).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from raylm.gateway.responses import json_response
from raylm.gateway.source import EventSource, NodeSource

if TYPE_CHECKING:
    from raylm.cluster.inventory import NodeInventory
    from raylm.gateway.app import Gateway, Handler

_FILES = {
    "/dashboard": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "/dashboard/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
    "/dashboard/vendor/uPlot.LICENSE": ("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
}
PAGE = "dashboard"
"""The label of the page and its files: served without a key (they hold no data)."""
DATA = "dashboard_data"
"""The label of the events feed: the API key or the admin key, when one is set."""
NODES = "dashboard_nodes"
"""The label of the nodes feed: the admin key when one is set (else as DATA)."""
# The page runs its own files only, and no other site may frame it.
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'",
}


class DashboardRoutes:
    """The page, its files and its feeds."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        root = resources.files("raylm.gateway") / "dashboard"
        # Read once: a few hundred KiB, served from memory.
        self._files = {path: (root / name).read_bytes() for path, (name, _) in _FILES.items()}

    def routes(self) -> dict[tuple[str, str], tuple[str, Handler]]:
        table: dict[tuple[str, str], tuple[str, Handler]] = {
            ("GET", path): (PAGE, self._file) for path in _FILES
        }
        table[("GET", "/dashboard/events")] = (DATA, self.events)
        table[("GET", "/dashboard/nodes")] = (NODES, self.nodes)
        return table

    async def _file(self, request: Request) -> Response:
        path = request.url.path
        return Response(
            self._files[path],
            media_type=_FILES[path][1],
            headers=_HEADERS,
        )

    async def events(self, request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            since = 0
        source = self.gateway.source
        if isinstance(source, EventSource):  # a worker other than 0: worker 0's feed
            feed = await source.events(since)
        else:
            feed = self.gateway.upstream.events.feed(since)
        return json_response(feed.model_dump(mode="json"))

    async def nodes(self, request: Request) -> Response:
        source = self.gateway.source
        if not isinstance(source, NodeSource):
            return json_response({"nodes": [], "error": "this gateway runs no deployment"})
        try:
            nodes = await source.nodes()
        except Exception as e:  # the cluster is someone else's: the page shows why
            return json_response({"nodes": [], "error": f"{type(e).__name__}: {e}"})
        return json_response({"nodes": [_card(n) for n in nodes], "error": ""})


def _card(n: NodeInventory) -> dict[str, object]:
    """What the page shows of a node, and nothing more (no ids, paths or placements)."""
    v = n.versions
    return {
        "ip": n.ip,
        "role": n.role,
        "alive": n.alive,
        "cpus": n.cpus,
        "gpus": [{"name": g.name, "memory_total_bytes": g.memory_total_bytes} for g in n.gpus],
        "memory_bytes": n.memory_bytes,
        "disk_free_bytes": n.disk_free_bytes,
        "versions": (
            v.model_dump(include={"ray", "vllm", "vllm_dist", "torch", "python_full", "driver"})
            if v
            else None
        ),
        "error": n.error,
    }
