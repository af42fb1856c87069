"""The dashboard: `/dashboard`, a page of static files in the package (no build step; the
charts are uPlot's, vendored from npm with its license in dashboard/vendor/), and the two
feeds only it reads: `/dashboard/events` (raylm.gateway.events) and `/dashboard/nodes`
(every node, as `raylm status` shows it).

The page and its files hold no data, so a browser loads them without a key; every figure it
shows comes from `/`, `/metrics` and the two feeds, which need the API key (or the admin
key) when one is set. The page asks for the key, or takes it from the URL's fragment
(`/dashboard#key=...`: browsers never send the fragment, so no log sees it).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from raylm.gateway.responses import json_response
from raylm.gateway.source import NodeSource

if TYPE_CHECKING:
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
"""The label of the feeds: the API key or the admin key, when one is set."""


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
        table[("GET", "/dashboard/nodes")] = (DATA, self.nodes)
        return table

    async def _file(self, request: Request) -> Response:
        path = request.url.path
        return Response(
            self._files[path],
            media_type=_FILES[path][1],
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def events(self, request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            since = 0
        events = self.gateway.upstream.events.since(since)
        return json_response({"events": [e.model_dump() for e in events]})

    async def nodes(self, request: Request) -> Response:
        source = self.gateway.source
        if not isinstance(source, NodeSource):
            return json_response({"nodes": [], "error": "this gateway runs no deployment"})
        try:
            nodes = await source.nodes()
        except Exception as e:  # the cluster is someone else's: the page shows why
            return json_response({"nodes": [], "error": f"{type(e).__name__}: {e}"})
        return json_response({"nodes": [n.model_dump(mode="json") for n in nodes], "error": ""})
