"""The gateway: one ASGI app in front of every replica.

OpenAI routes are proxied as raw bytes (the body is parsed only to read `model` and
`stream`; streams are relayed chunk by chunk, never re-encoded). Native routes answer
from the replica table or run on a replica's /v1/completions. The dispatch is a dict
lookup rather than a router so the added latency per request stays well under 1 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import aiohttp
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from raylm import __version__
from raylm.gateway import metrics as gm
from raylm.gateway.body import ClientGone, parse_object, read_body, wait_disconnect
from raylm.gateway.limits import Refusal, admit
from raylm.gateway.native import (
    BatchGenerateRequest,
    GenerateRequest,
    GenerateResult,
    SamplingFields,
    validation_message,
)
from raylm.gateway.responses import (
    error_message,
    error_response,
    json_response,
    sse_error_event,
    unavailable,
)
from raylm.gateway.routing import ReplicaTable
from raylm.gateway.settings import GatewaySettings
from raylm.gateway.source import ReplicaSource
from raylm.serve.state import ReplicaInfo

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")

CLIENT_CLOSED = 499
"""Status counted (never sent) when the client left before its answer: nginx's 499."""

# Enough of a stream's end to find its final usage chunk and the [DONE] marker.
_TAIL_BYTES = 8192
_DONE = b"data: [DONE]"


@dataclass
class _Upstream:
    """A buffered answer from a replica."""

    status: int
    body: bytes
    content_type: str
    replica: ReplicaInfo


@dataclass
class _Attempt:
    """What one client request has tried so far."""

    tried: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    retried: bool = False


class _ReplicaFailed(Exception):
    """A replica failed before sending anything we passed on: safe to try another."""


class _RelayResponse(StreamingResponse):
    """A stream whose replica is released exactly once, however it ends (done, broken,
    or the client gone before the first byte, when the generator never even started).
    `client_gone` tells, afterwards, whether the client left before the stream ended."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], object], **kw: Any
    ) -> None:
        super().__init__(self._to_the_end(content), **kw)
        self._on_close: Callable[[], object] | None = on_close
        self.client_gone = True

    async def _to_the_end(self, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in content:
            yield chunk
        self.client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # Starlette cancels the stream when the client disconnects; closing the
            # unfinished upstream answer (on_close) then makes vLLM abort the request.
            await super().__call__(scope, receive, send)
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class Gateway:
    """Routes requests over the replicas a `ReplicaSource` reports. Use `create_gateway`."""

    def __init__(self, source: ReplicaSource, settings: GatewaySettings) -> None:
        self.settings = settings
        self.source = source
        self.table = ReplicaTable(eject_s=settings.eject_s)
        self.metrics = gm.GatewayMetrics(self.table)
        self._key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self._session: aiohttp.ClientSession | None = None
        key = settings.upstream_api_key
        self._upstream_headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        )
        self._refresher: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self._draining = False
        self._stopping = False
        self._streams: set[aiohttp.ClientResponse] = set()
        self._stream_timeout = aiohttp.ClientTimeout(
            sock_connect=settings.connect_timeout_s, sock_read=settings.stream_idle_timeout_s
        )
        self._buffered_timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s
        )
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_refresh_error = ""
        self._routes: dict[tuple[str, str], tuple[str, Handler]] = {
            ("POST", "/v1/chat/completions"): ("chat", self._chat),
            ("POST", "/v1/completions"): ("completions", self._completions),
            ("GET", "/v1/models"): ("models", self._models),
            ("GET", "/"): ("root", self._root),
            ("GET", "/health"): ("health", self._health),
            ("GET", "/metrics"): ("metrics", self._metrics),
            ("POST", "/generate"): ("generate", self._generate),
            ("POST", "/batch_generate"): ("batch_generate", self._batch_generate),
        }
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
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
            # No cookies and no compression between gateway and replica: both cost CPU
            # on every request and neither is used by vLLM.
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        await self.refresh()
        if self._refresher is None:
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name="raylm-gateway-refresh"
            )

    async def stop(self) -> None:
        """Drain (bounded by `drain_timeout_s`) unless drain() already ran, then stop
        refreshing and close the pool: streams still running end with an error event."""
        if not self._draining:
            await self.drain(self.settings.drain_timeout_s)
        self._stopping = True
        for resp in list(self._streams):
            # Closing the pool does not wake a pending read; this does.
            resp.content.set_exception(aiohttp.ClientConnectionError("gateway stopping"))
        if self._streams:
            # Let the relays send their last event (bounded: a client may not read).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=2)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests (503 + Retry-After) and wait up to `timeout_s` for those in
        flight. True when none is left."""
        self._draining = True
        if self._active:
            logger.info("draining %d in-flight request(s), up to %.1f s", self._active, timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            logger.warning("drain timed out with %d request(s) still in flight", self._active)
            return False
        return True

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def active_requests(self) -> int:
        """Requests being served by replicas now (streams until their last byte)."""
        return self._active

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

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_interval_s)
            await self.refresh()

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
        elif self._key is not None and path != "/health" and not self._authorized(scope):
            response = error_response(
                401,
                "Missing or wrong API key: send the header `Authorization: Bearer <key>`.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            try:
                response = await route[1](Request(scope, receive))
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
        gone = isinstance(response, _RelayResponse) and response.client_gone
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

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    # ------------------------------------------------------------ request body

    async def _read_json(self, request: Request) -> tuple[dict[str, Any], bytes] | Response:
        """The body as a JSON object and its exact bytes, or the 4xx that says why not;
        raises ClientGone when the client leaves while sending it."""
        limits = self.settings.limits
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return refused(
                Refusal(
                    413,
                    f"Request body over {limits.max_body_bytes} bytes.",
                    None,
                    "request_too_large",
                )
            )
        body = await read_body(request.receive, limits.max_body_bytes)
        if isinstance(body, Refusal):
            return refused(body)
        parsed = parse_object(body, limits)
        if isinstance(parsed, Refusal):
            return refused(parsed)
        return parsed, body

    def _context(self, model: str) -> int | None:
        """The context length of `model`'s replicas, when they report it."""
        lens = [
            r.max_model_len
            for r in self.table.replicas
            if r.model == model and r.max_model_len is not None
        ]
        return min(lens) if lens else None

    async def _unless_client_leaves(self, work: Awaitable[T], receive: Receive) -> T:
        """`work`'s result; when the client leaves first, `work` is cancelled (its upstream
        request closed, so the replica stops generating) and ClientGone is raised."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone

    def _resolve_model(self, requested: object) -> str | Response:
        """The model a request is for; an OpenAI-style error when it cannot be served."""
        models = self.table.models()
        if requested is None:
            if len(models) == 1:
                return models[0]
            if not models:
                return unavailable("No model is being served yet.", self.settings.retry_after_s)
            return error_response(
                400,
                f"`model` is required: several models are served ({', '.join(models)}).",
                param="model",
                code="model_required",
            )
        if not isinstance(requested, str):
            return error_response(400, "`model` must be a string.", param="model")
        if requested not in models:
            served = ", ".join(models) or "none yet"
            return error_response(
                404,
                f"The model `{requested}` does not exist. Served: {served}.",
                param="model",
                code="model_not_found",
            )
        return requested

    # ------------------------------------------------------------ upstream calls

    def _begin(self, replica: ReplicaInfo) -> None:
        self.table.acquire(replica.replica_id)
        self._active += 1
        self._idle.clear()
        self.metrics.in_flight.inc()
        self.metrics.routed.labels(replica.replica_id).inc()

    def _end(self, replica: ReplicaInfo) -> None:
        self.table.release(replica.replica_id)
        self._active -= 1
        if self._active == 0:
            self._idle.set()
        self.metrics.in_flight.dec()

    def _close_stream(self, replica: ReplicaInfo, resp: aiohttp.ClientResponse) -> None:
        self._streams.discard(resp)
        resp.release()
        self._end(replica)

    def _failed(self, replica: ReplicaInfo, why: str) -> None:
        logger.warning("replica %s failed before answering: %s", replica.replica_id, why)
        if self.table.eject(replica):
            self.metrics.failovers.labels(replica.replica_id).inc()

    async def _open(
        self, replica: ReplicaInfo, path: str, body: bytes, stream: bool
    ) -> aiohttp.ClientResponse:
        """Send a request to a replica; raise `_ReplicaFailed` when it fails before any
        byte of an answer (connection refused or reset, or it says 502/503)."""
        assert self._session is not None, "Gateway.start() was not called"
        s = self.settings
        timeout = self._stream_timeout if stream else self._buffered_timeout
        try:
            resp = await self._session.post(
                replica.url + path, data=body, headers=self._upstream_headers, timeout=timeout
            )
        except aiohttp.ServerTimeoutError as e:
            if isinstance(e, aiohttp.ConnectionTimeoutError):
                raise _ReplicaFailed(f"no connection within {s.connect_timeout_s} s") from e
            raise  # a slow answer is not a failure to retry: it would double the load
        except aiohttp.ClientConnectionError as e:
            raise _ReplicaFailed(f"{type(e).__name__}: {e}") from e
        if resp.status in (502, 503):
            try:
                detail = error_message(await resp.read())
            except (aiohttp.ClientError, TimeoutError):
                detail = ""
            finally:
                resp.release()
            raise _ReplicaFailed(f"it answered {resp.status} {detail}".strip())
        return resp

    async def _call(
        self, route: str, model: str, path: str, body: bytes, stream: bool, attempt: _Attempt
    ) -> tuple[ReplicaInfo, aiohttp.ClientResponse] | Response:
        """Pick a replica and open the request; when one fails before answering, try one
        other replica (once per request). The replica stays acquired until `_end`."""
        if self._draining:
            return unavailable(
                "The gateway is draining for shutdown.", self.settings.retry_after_s, "draining"
            )
        while True:
            replica = self.table.pick(model, frozenset(attempt.tried))
            if replica is None:
                break
            if attempt.tried:
                if attempt.retried or not self.settings.retry_on_failure:
                    break
                attempt.retried = True
                self.metrics.retries.labels(route).inc()
            attempt.tried.add(replica.replica_id)
            self._begin(replica)
            try:
                return replica, await self._open(replica, path, body, stream)
            except _ReplicaFailed as e:
                self._end(replica)
                self._failed(replica, str(e))
                attempt.failures.append(f"{replica.replica_id}: {e}")
            except (aiohttp.ClientError, TimeoutError) as e:
                self._end(replica)
                return error_response(
                    504,
                    f"Replica {replica.replica_id} did not answer in time ({type(e).__name__}).",
                    type="timeout_error",
                    code="upstream_timeout",
                )
            except BaseException:
                self._end(replica)
                raise
        if attempt.failures:
            return unavailable(
                f"No replica of `{model}` could take the request ({'; '.join(attempt.failures)}).",
                self.settings.retry_after_s,
                "replica_failed",
            )
        return unavailable(self._why_unavailable(model), self.settings.retry_after_s)

    def _why_unavailable(self, model: str) -> str:
        reps = [r for r in self.table.replicas if r.model == model]
        states = ", ".join(
            f"{r.replica_id} {r.state.value}" + (f" ({r.detail})" if r.detail else "") for r in reps
        )
        return f"No ready replica of `{model}` right now" + (f": {states}." if states else ".")

    async def _buffered(
        self, route: str, model: str, path: str, body: bytes
    ) -> _Upstream | Response:
        """A whole non-streaming answer. Nothing reaches the client before it is complete,
        so a replica failing at any point before that may be replaced (once)."""
        attempt = _Attempt()
        while True:
            opened = await self._call(route, model, path, body, False, attempt)
            if isinstance(opened, Response):
                return opened
            replica, resp = opened
            try:
                data = await resp.read()
                ctype = resp.headers.get("Content-Type", "application/json")
                return _Upstream(resp.status, data, ctype, replica)
            except TimeoutError:
                return error_response(
                    504,
                    f"Replica {replica.replica_id} did not answer within "
                    f"{self.settings.request_timeout_s} s.",
                    type="timeout_error",
                    code="upstream_timeout",
                )
            except aiohttp.ClientError as e:
                self._failed(replica, f"{type(e).__name__}: {e}")
                attempt.failures.append(f"{replica.replica_id}: {type(e).__name__}: {e}")
            finally:
                resp.release()
                self._end(replica)

    async def _relay(
        self, route: str, model: str, replica: ReplicaInfo, resp: aiohttp.ClientResponse, t0: float
    ) -> AsyncIterator[bytes]:
        """Pass a replica's SSE bytes through as they come; end with an error event when
        the replica fails or goes quiet mid-way."""
        tail = b""
        first = True
        try:
            try:
                async for chunk in resp.content.iter_any():
                    if first:
                        self.metrics.ttft.labels(route).observe(time.perf_counter() - t0)
                        first = False
                    tail = (tail + chunk)[-_TAIL_BYTES:]
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as e:
                self.metrics.stream_errors.labels(route).inc()
                if self._stopping:
                    yield sse_error_event("The gateway stopped before the stream finished.", 503)
                    return
                why = (
                    f"no data for {self.settings.stream_idle_timeout_s} s"
                    if isinstance(e, TimeoutError)
                    else f"{type(e).__name__}: {e}"
                )
                logger.warning("stream from %s broke: %s", replica.replica_id, why)
                yield sse_error_event(f"Replica {replica.replica_id} failed mid-stream: {why}.")
                return
            if not tail.rstrip().endswith(_DONE):
                self.metrics.stream_errors.labels(route).inc()
                yield sse_error_event(
                    f"Replica {replica.replica_id} closed the stream before it was complete."
                )
                return
            self._count_stream_usage(model, tail)
        finally:
            resp.release()

    def _count_stream_usage(self, model: str, tail: bytes) -> None:
        # Only the last JSON event can carry usage (stream_options.include_usage).
        for event in reversed(tail.split(b"\n\n")):
            event = event.strip()
            if not event.startswith(b"data: {"):
                continue
            try:
                parsed = json.loads(event[6:])
            except ValueError:
                return
            if isinstance(parsed, dict):
                self.metrics.count_usage(model, parsed.get("usage"))
            return

    # ------------------------------------------------------------- OpenAI routes

    async def _chat(self, request: Request) -> Response:
        return await self._proxy(request, "chat", "/v1/chat/completions", "messages")

    async def _completions(self, request: Request) -> Response:
        return await self._proxy(request, "completions", "/v1/completions", "prompt")

    async def _proxy(self, request: Request, route: str, path: str, required: str) -> Response:
        t0 = time.perf_counter()
        got = await self._read_json(request)
        if isinstance(got, Response):
            return got
        parsed, body = got
        if required not in parsed:
            return error_response(400, f"Missing required field `{required}`.", param=required)
        stream = parsed.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            return error_response(400, "`stream` must be true or false.", param="stream")
        model = self._resolve_model(parsed.get("model"))
        if isinstance(model, Response):
            return model
        refusal = admit(parsed, self.settings.limits, self._context(model))
        if refusal is not None:
            return refused(refusal)
        if not stream:
            up = await self._unless_client_leaves(
                self._buffered(route, model, path, body), request.receive
            )
            if isinstance(up, Response):
                return up
            if up.status == 200:
                self._count_body_usage(model, up.body)
            return Response(up.body, status_code=up.status, media_type=up.content_type)
        opened = await self._call(route, model, path, body, True, _Attempt())
        if isinstance(opened, Response):
            return opened
        replica, resp = opened
        ctype = resp.headers.get("Content-Type", "")
        if resp.status != 200 or not ctype.startswith("text/event-stream"):
            # vLLM rejects a bad streaming request with a plain JSON error.
            try:
                data = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as e:
                data = json.dumps({"error": {"message": str(e), "type": "upstream_error"}}).encode()
            finally:
                resp.release()
                self._end(replica)
            return Response(data, status_code=resp.status, media_type=ctype or "application/json")
        self._streams.add(resp)
        return _RelayResponse(
            self._relay(route, model, replica, resp, t0),
            on_close=partial(self._close_stream, replica, resp),
            media_type=ctype,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _count_body_usage(self, model: str, body: bytes) -> None:
        try:
            parsed = json.loads(body)
        except ValueError:
            return
        if isinstance(parsed, dict):
            self.metrics.count_usage(model, parsed.get("usage"))

    async def _models(self, request: Request) -> Response:
        data = []
        for status in self.table.status():
            if not status.ready:
                continue
            lens = [
                r.max_model_len
                for r in self.table.replicas
                if r.model == status.model and r.max_model_len is not None
            ]
            entry: dict[str, Any] = {
                "id": status.model,
                "object": "model",
                "created": int(self._started_at),
                "owned_by": "raylm",
            }
            if lens:
                entry["max_model_len"] = min(lens)
            data.append(entry)
        return json_response({"object": "list", "data": data})

    # ------------------------------------------------------------- native routes

    async def _root(self, request: Request) -> Response:
        replicas = [
            {
                "replica_id": r.replica_id,
                "model": r.model,
                "node": r.node,
                "nodes": r.nodes,
                "state": r.state.value,
                "routable": self.table.is_routable(r),
                "in_flight": self.table.in_flight(r.replica_id),
                "restarts": r.restarts,
                "detail": r.detail,
            }
            for r in self.table.replicas
        ]
        return json_response(
            {
                "name": "raylm",
                "version": __version__,
                "uptime_s": round(time.time() - self._started_at, 3),
                "draining": self._draining,
                "models": [
                    {"model": s.model, "ready_replicas": s.ready, "replicas": s.total}
                    for s in self.table.status()
                ],
                "replicas": replicas,
            }
        )

    async def _health(self, request: Request) -> Response:
        status = self.table.status()
        models = {s.model: {"ready": s.ready, "replicas": s.total} for s in status}
        headers = {"Retry-After": str(self.settings.retry_after_s)}
        if self._draining:
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
                else "No ready replica for: "
                + "; ".join(
                    self._why_unavailable(m).removeprefix("No ready replica of ") for m in missing
                )
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

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=gm.CONTENT_TYPE)

    async def _native_params(
        self, request: Request, kind: type[SamplingFields]
    ) -> tuple[Any, str] | Response:
        got = await self._read_json(request)
        if isinstance(got, Response):
            return got
        try:
            params = kind.model_validate(got[0])
        except ValidationError as e:
            message, param = validation_message(e)
            return error_response(400, message, param=param)
        model = self._resolve_model(params.model)
        if isinstance(model, Response):
            return model
        prompts = getattr(params, "prompts", None) or [getattr(params, "prompt", "")]
        refusal = admit(
            {"prompt": prompts, "max_tokens": params.max_tokens},
            self.settings.limits,
            self._context(model),
        )
        if refusal is not None:
            return refused(refusal)
        return params, model

    async def _complete_one(
        self, params: SamplingFields, prompt: str, model: str, route: str
    ) -> GenerateResult | Response:
        body = json.dumps(params.completion_body(prompt, model)).encode()
        up = await self._buffered(route, model, "/v1/completions", body)
        if isinstance(up, Response):
            return up
        if up.status != 200:
            # vLLM's 4xx (e.g. a prompt longer than the context) keep status and message.
            return error_response(
                up.status,
                error_message(up.body),
                type="invalid_request_error" if up.status < 500 else "upstream_error",
                code=up.status,
            )
        try:
            result = GenerateResult.from_completion(json.loads(up.body), model)
        except ValueError as e:
            return error_response(
                502,
                f"Replica {up.replica.replica_id} sent an unreadable answer: {e}.",
                type="upstream_error",
            )
        self.metrics.count_usage(model, result.usage)
        return result

    async def _generate(self, request: Request) -> Response:
        got = await self._native_params(request, GenerateRequest)
        if isinstance(got, Response):
            return got
        params, model = got
        result = await self._unless_client_leaves(
            self._complete_one(params, params.prompt, model, "generate"), request.receive
        )
        if isinstance(result, Response):
            return result
        return json_response(result.model_dump())

    async def _batch_generate(self, request: Request) -> Response:
        got = await self._native_params(request, BatchGenerateRequest)
        if isinstance(got, Response):
            return got
        params, model = got
        if not params.prompts:
            return error_response(400, "`prompts` is empty.", param="prompts", code="empty_batch")
        results = await self._unless_client_leaves(
            asyncio.gather(
                *(self._complete_one(params, p, model, "batch_generate") for p in params.prompts)
            ),
            request.receive,
        )
        for i, result in enumerate(results):
            if isinstance(result, Response):
                body = bytes(result.body)
                return error_response(
                    result.status_code,
                    f"prompts[{i}]: {error_message(body)}",
                    type="invalid_request_error" if result.status_code < 500 else "upstream_error",
                    param=f"prompts[{i}]",
                    code=result.status_code,
                    headers={k: v for k, v in result.headers.items() if k.lower() == "retry-after"},
                )
        done = [r for r in results if isinstance(r, GenerateResult)]
        usage: dict[str, int] = {}
        for r in done:
            for k, v in r.usage.items():
                usage[k] = usage.get(k, 0) + v
        return json_response({"results": [r.model_dump() for r in done], "usage": usage})


def refused(r: Refusal) -> Response:
    """A limit's refusal as an OpenAI error answer. A body too large also ends the
    connection: the client would otherwise go on sending the rest of it."""
    headers = {"Connection": "close"} if r.status == 413 else None
    return error_response(r.status, r.message, param=r.param, code=r.code, headers=headers)


def create_gateway(source: ReplicaSource, settings: GatewaySettings | None = None) -> Gateway:
    """A gateway over `source`; call `await gateway.start()` (or serve it with
    `GatewayServer`) before it takes requests."""
    return Gateway(source, settings or GatewaySettings())
