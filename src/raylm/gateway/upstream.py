"""Calls from the gateway to replicas: picking one, opening the request, one retry on a
replica that fails before answering, buffered answers, relayed streams, and the count of
requests in flight that draining waits on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from starlette.responses import Response

from raylm.gateway import metrics as gm
from raylm.gateway.admission import Admission
from raylm.gateway.events import EventLog
from raylm.gateway.h1 import Answer, ConnectFailed, Disconnected, Pools, UpstreamError
from raylm.gateway.keys import CALLER
from raylm.gateway.policy import RouteRequest
from raylm.gateway.relay import Buffered, RelayResponse
from raylm.gateway.responses import (
    HttpError,
    error_message,
    error_response,
    replica_error,
    unavailable,
)
from raylm.gateway.routing import ReplicaTable
from raylm.gateway.settings import GatewaySettings
from raylm.gateway.sse import relay_sse
from raylm.replica import ReplicaInfo

logger = logging.getLogger(__name__)

# Idle pooled connections are dropped before a replica drops them: vLLM's server closes
# one idle for 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE), and a request sent on a connection as
# the replica closes it fails though the replica is well.
_POOL_KEEPALIVE_S = 4.0


@dataclass
class _Attempt:
    """What one client request has tried so far."""

    request: RouteRequest
    tried: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    retried: bool = False
    prefill: float = 0.0
    """Prompt tokens still counted as queued prefill on the replica it is on now."""
    deadline: float | None = None
    """Loop time by which a buffered answer must be whole (set at the first try)."""
    admitted: bool = False
    """It holds a slot of its model's admission (a stream passes it on as it closes)."""


class _ReplicaFailed(Exception):
    """A replica failed before sending anything we passed on: safe to try another."""


class Upstream:
    """The replicas' side of the gateway: one connection pool, the requests in flight."""

    def __init__(
        self, table: ReplicaTable, metrics: gm.GatewayMetrics, settings: GatewaySettings
    ) -> None:
        self.table = table
        self.metrics = metrics
        self.settings = settings
        key = settings.upstream_api_key
        self._headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        )
        self._session: aiohttp.ClientSession | None = None
        self._pools: Pools | None = None
        self._streams: set[Answer] = set()
        self.events = EventLog()
        """What happened to the replicas (the dashboard's feed): failovers from here,
        the rest from each table refresh (Gateway.refresh)."""
        self.active = 0
        """Requests being served by replicas now (streams until their last byte)."""
        self.idle = asyncio.Event()
        """Set while no request is in flight."""
        self.idle.set()
        self.draining = False
        """New requests get 503 + Retry-After."""
        self.stopping = False
        """Streams that break now end with the gateway's own 'stopped' event."""
        limits = settings.limits
        self.admission = Admission(
            limits.max_in_flight_per_replica,
            limits.max_queued_per_model,
            limits.queue_timeout_s,
            settings.retry_after_s,
            table.ready_count,
        )
        """Which requests go to replicas now, and which wait (admission.py)."""

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """A client for the replicas' side routes (engine metrics), not the requests."""
        return self._session

    @property
    def auth_headers(self) -> dict[str, str]:
        """What the gateway presents to its replicas (their private key, if any)."""
        return {k: v for k, v in self._headers.items() if k == "Authorization"}

    # ----------------------------------------------------------------- life cycle

    def open_pool(self) -> None:
        if self._pools is None:
            self._pools = Pools(self._headers, _POOL_KEEPALIVE_S)
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=_POOL_KEEPALIVE_S, ttl_dns_cache=300
            )
            # No cookies and no compression between gateway and replica: both cost CPU
            # on every request and neither is used by vLLM.
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )

    async def end_streams(self) -> None:
        """Break every stream still running; wait (briefly) for their last events."""
        self.stopping = True
        for answer in list(self._streams):
            answer.abort("gateway stopping")
        if self._streams:
            # Let the relays send their last event (bounded: a client may not read).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), timeout=2)

    async def close_pool(self) -> None:
        if self._pools is not None:
            self._pools.close()
            self._pools = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ accounting

    def _begin(self, replica: ReplicaInfo, attempt: _Attempt) -> None:
        self.table.acquire(replica.replica_id, attempt.prefill)
        self.active += 1
        self.idle.clear()
        self.metrics.in_flight.inc()
        self.metrics.child(self.metrics.routed, replica.replica_id).inc()

    def _end(self, replica: ReplicaInfo, attempt: _Attempt) -> None:
        self.table.release(replica.replica_id, attempt.prefill)
        attempt.prefill = 0.0
        self.active -= 1
        if self.active == 0:
            self.idle.set()
        self.metrics.in_flight.dec()

    def _close_stream(self, replica: ReplicaInfo, resp: Answer, attempt: _Attempt) -> None:
        self._streams.discard(resp)
        resp.release()
        self._end(replica, attempt)
        if attempt.admitted:
            self.admission.leave(attempt.request.model)

    def _failed(self, replica: ReplicaInfo, why: str) -> None:
        logger.warning("replica %s failed before answering: %s", replica.replica_id, why)
        if self.table.eject(replica):
            self.metrics.failovers.labels(replica.replica_id).inc()
            self.events.add("failover", replica.replica_id, f"failed before answering: {why}")

    # ------------------------------------------------------------ calls

    async def _open(self, replica: ReplicaInfo, path: str, body: bytes, deadline: float) -> Answer:
        """Send a request to a replica and wait for its answer's headers (by `deadline`,
        loop time); raise `_ReplicaFailed` when it fails before any byte of an answer
        (connection refused or reset, or it says 502/503)."""
        assert self._pools is not None, "Gateway.start() was not called"
        s = self.settings
        pool = self._pools.of(replica.url)
        for last_try in (False, True):
            try:
                resp = await pool.post(path, body, s.connect_timeout_s, fresh=last_try)
            except (ConnectFailed, Disconnected) as e:
                raise _ReplicaFailed(str(e)) from e
            try:
                async with asyncio.timeout_at(deadline):
                    await resp.wait_headers()
                break
            except Disconnected as e:
                # Closed without a byte of answer: most often a pooled connection the replica
                # closed as idle just as this request went out. Once more, on a new one; a
                # replica that is really gone then refuses the connection.
                if last_try or not resp.reused:
                    raise _ReplicaFailed(str(e)) from e
            except UpstreamError as e:  # cut off or garbled before its headers: nothing sent on
                resp.close()
                raise _ReplicaFailed(str(e)) from e
            except BaseException:
                resp.close()  # a slow answer is not a failure to retry: it would double the load
                raise
        if resp.status in (502, 503):
            try:
                async with asyncio.timeout_at(deadline):
                    detail = error_message(await resp.read())
            except (UpstreamError, TimeoutError):
                detail = ""
            finally:
                resp.release()
            raise _ReplicaFailed(f"it answered {resp.status} {detail}".strip())
        return resp

    async def _call(
        self, route: str, model: str, path: str, body: bytes, stream: bool, attempt: _Attempt
    ) -> tuple[ReplicaInfo, Answer, float]:
        """Pick a replica and open the request; when one fails before answering, try one
        other replica (once per request). The replica stays acquired until `_end`."""
        retry_after = self.settings.retry_after_s
        if self.draining:
            raise HttpError(
                unavailable("The gateway is draining for shutdown.", retry_after, "draining")
            )
        while True:
            decision = self.table.pick(model, frozenset(attempt.tried), attempt.request)
            if decision is None:
                break
            replica = decision.replica
            m = self.metrics
            m.child(m.routing, self.table.policy.name, decision.reason).inc()
            if decision.cached_tokens:
                m.child(m.predicted_cached, replica.replica_id).inc(decision.cached_tokens)
            if attempt.tried:
                if attempt.retried or not self.settings.retry_on_failure:
                    break
                attempt.retried = True
                self.metrics.retries.labels(route).inc()
            attempt.tried.add(replica.replica_id)
            attempt.prefill = decision.prefill_tokens
            self._begin(replica, attempt)
            # The answer's deadline: a stream's headers within its idle bound; a buffered
            # answer whole within request_timeout_s of the first try, retries included.
            now = asyncio.get_running_loop().time()
            if stream:
                deadline = now + self.settings.stream_idle_timeout_s
            else:
                if attempt.deadline is None:
                    attempt.deadline = now + self.settings.request_timeout_s
                deadline = attempt.deadline
            try:
                return replica, await self._open(replica, path, body, deadline), deadline
            except _ReplicaFailed as e:
                self._end(replica, attempt)
                self._failed(replica, str(e))
                attempt.failures.append(f"{replica.replica_id}: {e}")
            except (UpstreamError, TimeoutError) as e:
                self._end(replica, attempt)
                raise HttpError(
                    error_response(
                        504,
                        f"Replica {replica.replica_id} did not answer in time "
                        f"({type(e).__name__}).",
                        type="timeout_error",
                        code="upstream_timeout",
                    )
                ) from e
            except BaseException:
                self._end(replica, attempt)
                raise
        if attempt.failures:
            failures = "; ".join(attempt.failures)
            raise HttpError(
                unavailable(
                    f"No replica of `{model}` could take the request ({failures}).",
                    retry_after,
                    "replica_failed",
                )
            )
        raise HttpError(
            unavailable("No ready replica of " + self.table.unready(model), retry_after)
        )

    async def _admit(self, model: str) -> bool:
        """Wait for a slot of `model` (admission.py): True when one is held."""
        if self.draining:
            return False  # a draining gateway refuses in _call, without queueing
        caller = CALLER.get()
        return await self.admission.enter(model, caller.priority if caller else "interactive")

    async def buffered(self, route: str, request: RouteRequest, path: str, body: bytes) -> Buffered:
        """A whole non-streaming answer. Nothing reaches the client before it is complete,
        so a replica failing at any point before that may be replaced (once)."""
        held = self.admission.per_replica is not None and await self._admit(request.model)
        try:
            return await self._buffered(route, request, path, body)
        finally:
            if held:
                self.admission.leave(request.model)

    async def _buffered(
        self, route: str, request: RouteRequest, path: str, body: bytes
    ) -> Buffered:
        model = request.model
        attempt = _Attempt(request)
        while True:
            replica, resp, deadline = await self._call(route, model, path, body, False, attempt)
            try:
                async with asyncio.timeout_at(deadline):
                    data = await resp.read()
                ctype = resp.headers.get("content-type", "application/json")
                return Buffered(
                    *replica_error(replica.replica_id, resp.status, data, ctype), replica
                )
            except TimeoutError as e:
                raise HttpError(
                    error_response(
                        504,
                        f"Replica {replica.replica_id} did not answer within "
                        f"{self.settings.request_timeout_s} s.",
                        type="timeout_error",
                        code="upstream_timeout",
                    )
                ) from e
            except UpstreamError as e:
                self._failed(replica, f"{type(e).__name__}: {e}")
                attempt.failures.append(f"{replica.replica_id}: {type(e).__name__}: {e}")
            finally:
                resp.release()
                self._end(replica, attempt)

    async def stream(
        self, route: str, request: RouteRequest, path: str, body: bytes, t0: float
    ) -> Response:
        """A streaming answer relayed as it comes, or the replica's own error answer."""
        held = self.admission.per_replica is not None and await self._admit(request.model)
        try:
            response = await self._stream(route, request, path, body, t0, held)
        except BaseException:
            if held:
                self.admission.leave(request.model)
            raise
        if held and not isinstance(response, RelayResponse):
            self.admission.leave(request.model)  # a relayed stream leaves as it closes
        return response

    async def _stream(
        self, route: str, request: RouteRequest, path: str, body: bytes, t0: float, held: bool
    ) -> Response:
        model = request.model
        attempt = _Attempt(request, admitted=held)
        replica, resp, deadline = await self._call(route, model, path, body, True, attempt)
        ctype = resp.headers.get("content-type", "")
        if resp.status != 200 or not ctype.startswith("text/event-stream"):
            # vLLM rejects a bad streaming request with a plain JSON error.
            try:
                async with asyncio.timeout_at(deadline):
                    data = await resp.read()
            except (UpstreamError, TimeoutError) as e:
                data = json.dumps({"error": {"message": str(e), "type": "upstream_error"}}).encode()
            finally:
                resp.release()
                self._end(replica, attempt)
            status, data, ctype = replica_error(
                replica.replica_id, resp.status, data, ctype or "application/json"
            )
            return Response(data, status_code=status, media_type=ctype)
        self._streams.add(resp)
        return RelayResponse(
            self._relay(route, model, replica, resp, t0, attempt),
            on_close=partial(self._close_stream, replica, resp, attempt),
            media_type=ctype,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _relay(
        self,
        route: str,
        model: str,
        replica: ReplicaInfo,
        resp: Answer,
        t0: float,
        attempt: _Attempt,
    ) -> AsyncIterator[bytes]:
        """The replica's stream passed through (raylm.gateway.sse). The connection goes
        back to its pool in _close_stream (on_close), once: the response ends there
        however it ends."""

        def first() -> None:
            self.metrics.child(self.metrics.ttft, route).observe(time.perf_counter() - t0)
            # Its prefill is over: the replica's queue no longer holds it.
            self.table.prefilled(replica.replica_id, attempt.prefill)
            attempt.prefill = 0.0

        idle = self.settings.stream_idle_timeout_s
        return relay_sse(
            resp.chunks(idle),
            replica.replica_id,
            idle,
            on_first=first,
            on_usage=partial(self.metrics.count_usage, model),
            on_broken=lambda: self.metrics.stream_errors.labels(route).inc(),
            stopping=lambda: self.stopping,
        )
