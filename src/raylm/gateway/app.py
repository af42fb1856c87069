"""The gateway: one ASGI app in front of every replica. This module is its shell: life
cycle (start, drain, stop, refreshing the replica table), dispatch, auth and the one place
a route's HttpError becomes the answer. The routes live in `openai_routes`,
`native_routes` and `info_routes`, the calls to replicas in `upstream`.

The dispatch is a dict lookup rather than a router so the added latency per request stays
well under 1 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from raylm.autoscaling import AutoscaleStatus, LoadReport
from raylm.gateway import metrics as gm
from raylm.gateway.admin_routes import AdminRoutes
from raylm.gateway.admission import PRIORITIES
from raylm.gateway.body import ClientGone
from raylm.gateway.dashboard_routes import DATA, NODES, PAGE, DashboardRoutes
from raylm.gateway.engines import EngineView
from raylm.gateway.info_routes import InfoRoutes
from raylm.gateway.keys import CALLER, Keyring
from raylm.gateway.kv_index import BlockIndex, BlockSource
from raylm.gateway.kv_policy import KvAware
from raylm.gateway.native_routes import NativeRoutes
from raylm.gateway.openai_routes import OpenAIRoutes
from raylm.gateway.peers import WorkerPeers
from raylm.gateway.policy import make_policy
from raylm.gateway.rate_limits import RateLimits
from raylm.gateway.relay import RelayResponse
from raylm.gateway.responses import HttpError, error_response, rate_limited
from raylm.gateway.routing import ReplicaTable
from raylm.gateway.settings import GatewaySettings
from raylm.gateway.source import LoadSink, ReplicaSource
from raylm.gateway.tokens import PromptTokens
from raylm.gateway.upstream import Upstream
from raylm.replica import ReplicaInfo, ReplicaState

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
_VIEWS = frozenset({"root", "metrics", DATA, NODES})
"""Routes the dashboard reads: an API key or the admin key opens them."""

CLIENT_CLOSED = 499
"""Status counted (never sent) when the client left before its answer: nginx's 499."""

_SERIAL = itertools.count()
"""Gateways made in this process (tests make several)."""

INFERENCE = frozenset({"chat", "completions", "generate", "batch_generate"})
"""The routes that reach replicas: those rate limits count."""


class Gateway:
    """Routes requests over the replicas a `ReplicaSource` reports. Use `create_gateway`."""

    def __init__(self, source: ReplicaSource, settings: GatewaySettings) -> None:
        self.settings = settings
        self.source = source
        self.kv: KvAware | None = None
        if settings.routing == "kv-aware":
            self.kv = KvAware(BlockIndex(), PromptTokens(settings.model_dirs))
        self.table = ReplicaTable(
            eject_s=settings.eject_s, policy=make_policy(settings.routing, self.kv)
        )
        self.metrics = gm.GatewayMetrics(self.table)
        if self.kv is not None:
            self.metrics.registry.register(gm.KvIndexCollector(self.table, self.kv))
        self.upstream = Upstream(self.table, self.metrics, settings)
        self.metrics.registry.register(gm.AdmissionCollector(self.upstream.admission))
        self.engines = EngineView(settings.engine_scrape_interval_s, self.upstream.auth_headers)
        self.metrics.registry.register(gm.EngineCollector(self.table, self.engines))
        self._id = f"{socket.gethostname()}:{os.getpid()}:{next(_SERIAL)}"
        """This gateway, as its load reports name it."""
        self.autoscale: list[AutoscaleStatus] = []
        """The controller's autoscaling, as it answered this gateway's last load report."""
        self.metrics.registry.register(gm.AutoscaleCollector(lambda: self.autoscale))
        self.keyring = Keyring(settings.client_keys())
        self.rate_limits = RateLimits(settings.client_keys())
        if self.rate_limits:
            self.metrics.on_tokens = self._charge_tokens
        self.peers: WorkerPeers | None = None
        """The other gateway workers on this port, when there are (raylm.gateway.workers)."""
        self._refresher: asyncio.Task[None] | None = None
        self._scraper: asyncio.Task[None] | None = None
        self._kv_reader: asyncio.Task[None] | None = None
        self._tokenizer_loader: asyncio.Task[None] | None = None
        self._last_refresh_error = ""
        self._reporting: asyncio.Task[None] | None = None
        started_at = time.time()
        openai = OpenAIRoutes(self.upstream, started_at)
        native = NativeRoutes(self.upstream)
        info = InfoRoutes(self, started_at)
        admin_key = settings.admin_key.get_secret_value().encode() if settings.admin_key else None
        self.admin = AdminRoutes(source, admin_key)
        self._routes: dict[tuple[str, str], tuple[str, Handler]] = {
            ("POST", "/v1/chat/completions"): ("chat", openai.chat),
            ("POST", "/v1/completions"): ("completions", openai.completions),
            ("GET", "/v1/models"): ("models", openai.models),
            ("GET", "/"): ("root", info.root),
            ("GET", "/health"): ("health", info.health),
            ("GET", "/metrics"): ("metrics", info.metrics),
            ("POST", "/generate"): ("generate", native.generate),
            ("POST", "/batch_generate"): ("batch_generate", native.batch_generate),
            ("GET", "/admin/deployment"): ("admin", self.admin.deployment),
            ("POST", "/admin/scale"): ("admin", self.admin.scale),
            ("POST", "/admin/update"): ("admin", self.admin.update),
            ("POST", "/admin/autoscale"): ("admin", self.admin.autoscale),
            ("POST", "/admin/add"): ("admin", self.admin.add),
            ("POST", "/admin/remove"): ("admin", self.admin.remove),
        }
        self._routes.update(DashboardRoutes(self).routes())
        self._paths = {path for _, path in self._routes}

        # A plain coroutine function, not a bound method: servers (uvicorn) detect ASGI 3
        # by that and would otherwise treat the app as ASGI 2.
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._asgi(scope, receive, send)

        self.app: ASGIApp = app
        """The ASGI application."""

    # ----------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Open the upstream connection pool, read the replica table once, and keep it
        fresh every `refresh_interval_s`."""
        self.upstream.open_pool()
        await self.refresh()
        if self._refresher is None:
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name="raylm-gateway-refresh"
            )
        if self._scraper is None and self.settings.engine_scrape_interval_s > 0:
            self._scraper = asyncio.create_task(self._scrape_loop(), name="raylm-engine-scrape")
        if self._kv_reader is None and self.kv is not None and isinstance(self.source, BlockSource):
            self._kv_reader = asyncio.create_task(self._kv_loop(self.kv, self.source))
        if self._tokenizer_loader is None and self.kv is not None:
            # Off the event loop: loading took 0.6 s on a GPU host and 4.5 s on 2 busy
            # cores, and every request in flight would wait on it.
            self._tokenizer_loader = asyncio.create_task(
                asyncio.to_thread(self.kv.tokens.load), name="raylm-tokenizer-load"
            )

    async def stop(self) -> None:
        """Drain (bounded by `drain_timeout_s`) unless drain() already ran, then stop
        refreshing and close the pool: streams still running end with an error event."""
        if not self.upstream.draining:
            await self.drain(self.settings.drain_timeout_s)
        await self.upstream.end_streams()
        tasks = (self._refresher, self._scraper, self._kv_reader, self._tokenizer_loader)
        for task in (*tasks, self._reporting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._scraper = self._kv_reader = self._tokenizer_loader = None
        self._reporting = None
        await self.upstream.close_pool()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests (503 + Retry-After) and wait up to `timeout_s` for those in
        flight. True when none is left."""
        up = self.upstream
        up.draining = True
        if up.active:
            logger.info("draining %d in-flight request(s), up to %.1f s", up.active, timeout_s)
        try:
            await asyncio.wait_for(up.idle.wait(), timeout=timeout_s)
        except TimeoutError:
            logger.warning("drain timed out with %d request(s) still in flight", up.active)
            return False
        return True

    @property
    def draining(self) -> bool:
        return self.upstream.draining

    @property
    def refresh_error(self) -> str:
        """Why the last read of the replica source failed ('' when it worked)."""
        return self._last_refresh_error

    @property
    def active_requests(self) -> int:
        """Requests being served by replicas now (streams until their last byte)."""
        return self.upstream.active

    async def refresh(self) -> None:
        """Read the source once; on failure keep routing on the last table."""
        try:
            replicas = await self.source.snapshot()
        except Exception as e:  # the source is someone else's code: never let it kill routing
            msg = f"{type(e).__name__}: {e}"
            if msg != self._last_refresh_error:
                logger.warning("replica source failed, keeping the last table: %s", msg)
            self._last_refresh_error = msg
            return
        self._last_refresh_error = ""
        self.table.update(replicas)
        self.upstream.events.table(replicas)
        self.upstream.admission.poke()
        if self.kv is not None:
            self._learn_models(self.kv, replicas)
        reporting = self._reporting
        if isinstance(self.source, LoadSink) and (reporting is None or reporting.done()):
            # Not awaited: a slow controller must not hold up the replica table.
            self._reporting = asyncio.create_task(self._report_load(self.source))

    def _learn_models(self, kv: KvAware, replicas: list[ReplicaInfo]) -> None:
        """Load, off the event loop, the tokenizer of a model added live (`raylm add`);
        until it is loaded, that model's requests are routed by load."""
        for r in replicas:
            kv.tokens.learn(r.model, r.model_path)
        loader = self._tokenizer_loader
        if kv.tokens.unloaded() and (loader is None or loader.done()):
            self._tokenizer_loader = asyncio.create_task(
                asyncio.to_thread(kv.tokens.load), name="raylm-tokenizer-load"
            )

    async def _report_load(self, sink: LoadSink) -> None:
        """Tell the controller this process's load per model (what autoscaling acts on)."""
        load = self.table.in_flight_per_model()
        admission = self.upstream.admission
        for model in admission.models():
            waiting = sum(admission.waiting(model, p) for p in PRIORITIES)
            load[model] = load.get(model, 0) + waiting
        draining = {
            r.replica_id: self.table.in_flight(r.replica_id)
            for r in self.table.replicas
            if r.state is ReplicaState.STOPPING
        }
        report = LoadReport(gateway=self._id, load=load, draining=draining)
        try:
            self.autoscale = await sink.report_load(report)
        except Exception as e:  # routing goes on; autoscaling pauses without reports
            logger.debug("load report failed: %s: %s", type(e).__name__, e)
            self.autoscale = []  # unknown now: never export stale figures

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_interval_s)
            await self.refresh()

    async def _scrape_loop(self) -> None:
        while True:
            session = self.upstream.session
            if session is not None:
                ready = [r for r in self.table.replicas if r.state is ReplicaState.READY]
                await self.engines.scrape(session, ready)
            await asyncio.sleep(self.settings.engine_scrape_interval_s)

    async def read_kv(self, kv: KvAware, source: BlockSource) -> None:
        """Read the ready replicas' cache changes once into kv-aware routing's index."""
        ready = {r.replica_id: r for r in self.table.replicas if r.state is ReplicaState.READY}
        cursors = {rid: c for rid, c in kv.index.cursors.items() if rid in ready}
        try:
            deltas = await source.kv_deltas(cursors)
        except Exception as e:  # routing goes on by load and the last index
            logger.debug("reading KV cache changes failed: %s", e)
            return
        for rid, delta in deltas.items():
            if rid in ready:
                kv.index.apply(rid, delta)
                if delta.block_size:
                    kv.block_sizes[ready[rid].model] = delta.block_size

    async def _kv_loop(self, kv: KvAware, source: BlockSource) -> None:
        while True:
            await self.read_kv(kv, source)
            await asyncio.sleep(self.settings.kv_poll_interval_s)

    # ------------------------------------------------------------------- ASGI

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        route = self._routes.get((method, path))
        label = route[0] if route else "other"
        if route is None:
            if path in self._paths:
                response = error_response(405, f"Method {method} is not allowed on {path}.")
            else:
                response = error_response(
                    404, f"No route {path}.", type="not_found_error", code="not_found"
                )
        elif (refusal := self._refusal(scope, path, label)) is not None:
            response = refusal
        else:
            try:
                response = await route[1](Request(scope, receive))
            except HttpError as e:
                response = e.response
            except ClientGone:
                # Not the gateway's fault and nothing to answer: counted as nginx does.
                self.metrics.observe(label, CLIENT_CLOSED, time.perf_counter() - started)
                return
            except Exception:
                # A bug must still answer in the OpenAI shape, never a bare 500 page.
                logger.exception("gateway error on %s %s", method, path)
                response = error_response(
                    500, "Internal gateway error; see the gateway log.", type="internal_error"
                )
        await response(scope, receive, send)
        gone = isinstance(response, RelayResponse) and response.client_gone
        status = CLIENT_CLOSED if gone else response.status_code
        self.metrics.observe(label, status, time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _refusal(self, scope: Scope, path: str, label: str) -> Response | None:
        """Why a request may not go on (its key, its rates, or the admin key), or None."""
        if label == "admin":
            return self.admin.refusal(_authorization(scope))
        if label == NODES and self.admin.keyed:
            return self.admin.refusal(_authorization(scope))  # addresses and versions
        if label == PAGE or not self.keyring or path == "/health":
            return None
        if label in _VIEWS and self.admin.refusal(_authorization(scope)) is None:
            return None  # what an operator looks at: the admin key shows it too
        return self._admit(scope, label)

    def _admit(self, scope: Scope, label: str) -> Response | None:
        """The refusal of a request whose key is unknown (401) or, on an inference route,
        over its rates (429); None when it may go on, its key's name then kept in this
        request's context to charge its tokens to."""
        client = self.keyring.client(_authorization(scope))
        if client is None:
            return error_response(
                401,
                "Missing or wrong API key: send the header `Authorization: Bearer <key>`.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        CALLER.set(client)
        if label in INFERENCE and client.limited:
            refusal = self.rate_limits.admit(client.name)
            if refusal is not None:
                self.metrics.child(self.metrics.rate_limited, client.name, refusal.limit).inc()
                return rate_limited(refusal, client.name)
        return None

    def _charge_tokens(self, tokens: int) -> None:
        caller = CALLER.get()
        if caller is not None:
            self.rate_limits.charge(caller.name, tokens)


def _authorization(scope: Scope) -> bytes | None:
    return next((v for n, v in scope["headers"] if n == b"authorization"), None)


def create_gateway(source: ReplicaSource, settings: GatewaySettings | None = None) -> Gateway:
    """A gateway over `source`; call `await gateway.start()` (or serve it with
    `GatewayServer`) before it takes requests."""
    return Gateway(source, settings or GatewaySettings())
