"""The gateway's HTTP/1.1 client to its replicas: keep-alive connections pooled per
replica, requests written in one piece, answers parsed by httptools (as uvicorn parses
requests). aiohttp's request path (request and response objects, header multidicts,
timer handles, the connector) was about 40 % of the gateway's busy time at saturation;
this does only what a POST to vLLM needs.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

# A slow client must not make the gateway hold a replica's whole answer: past this much
# unread, the connection stops reading (TCP pushes back on the replica).
_HIGH_WATER = 256 * 1024


class UpstreamError(Exception):
    """A call to a replica failed."""


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, or not within the timeout)."""


class Disconnected(UpstreamError):
    """The connection closed before a byte of the answer: the request may not have been
    seen, so it is safe to send again."""


class BrokenAnswer(UpstreamError):
    """The answer stopped part-way (the connection closed or failed mid-answer)."""


class Answer(asyncio.Protocol):
    """One connection to a replica, and the answer to the request in flight on it."""

    def __init__(self, pool: ReplicaPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._wake: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._high_water: float = _HIGH_WATER
        self._paused = False
        self._error: UpstreamError | None = None
        self._got_bytes = False
        self.status = 0
        """The answer's HTTP status (once `wait_headers` returned)."""
        self.headers: dict[str, str] = {}
        """The answer's headers, names in lower case."""
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._released = False
        self._in_use = False
        self.idle_since = 0.0
        self.reused = False
        """Whether the request went out on a connection that had served one before."""

    # ------------------------------------------------------------ the protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_use:  # nothing was asked: an idle connection the replica gave up on
            self.close()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(BrokenAnswer(f"the replica's answer is not HTTP: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pool.forget(self)
        if self._complete:
            return
        if not self._got_bytes:
            self._fail(Disconnected("the replica closed the connection before answering"))
        else:
            why = f": {exc}" if exc else ""
            self._fail(BrokenAnswer(f"the replica closed the connection mid-answer{why}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._headers_done = True
        self._notify()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > self._high_water and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._notify()

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._notify()

    # ------------------------------------------------------------ the caller's side

    def send(self, request: bytes) -> None:
        if self._transport is None:  # closed by the replica between connecting and now
            raise Disconnected("the replica closed the connection before the request")
        # A pooled connection starts each answer afresh (release() pooled it only whole).
        self._got_bytes = self._complete = self._headers_done = self._released = False
        self._keep_alive = self._paused = False
        self._chunks.clear()
        self._buffered = self.status = 0
        self._error = None
        self._high_water = _HIGH_WATER
        self.headers = {}
        self._in_use = True
        self._transport.write(request)

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self._notify()

    async def _wait(self) -> None:
        """Until something happens; raises the answer's error once nothing is left to read."""
        if self._error is not None:
            if self._chunks and self._headers_done:
                return
            raise self._error
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None
        if self._error is not None and not self._chunks:
            raise self._error

    async def wait_headers(self) -> None:
        """Return once the status and headers arrived (raise UpstreamError if not)."""
        while not self._headers_done:
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (held whatever its size: the caller wants all of it)."""
        self._high_water = float("inf")
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def chunks(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        """The body as it comes; TimeoutError when nothing came for `idle_timeout_s`."""
        while True:
            if self._chunks:
                chunk = b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
                yield chunk
            elif self._complete:
                return
            else:
                async with asyncio.timeout(idle_timeout_s):
                    await self._wait()

    def abort(self, why: str) -> None:
        """Break the answer: readers waiting on it raise BrokenAnswer(`why`)."""
        self._fail(BrokenAnswer(why))
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def release(self) -> None:
        """Done with this answer: back to the pool when whole and reusable, else closed.
        Once per answer: later calls do nothing."""
        if self._released:
            return
        self._released = True
        self._in_use = False
        if self._complete and self._keep_alive and self._error is None and not self._chunks:
            self.idle_since = time.monotonic()
            self._pool.put(self)
        else:
            self.close()


class ReplicaPool:
    """Keep-alive connections to one replica (`http://host:port`)."""

    def __init__(self, base_url: str, headers: dict[str, str], keepalive_s: float) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.keepalive_s = keepalive_s
        lines = [f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
        self._head = "\r\n".join(lines).encode("latin-1")
        self._idle: list[Answer] = []
        self._closed = False

    def put(self, conn: Answer) -> None:
        if self._closed:  # released after the gateway closed its pools
            conn.close()
        else:
            self._idle.append(conn)

    def forget(self, conn: Answer) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    async def post(self, path: str, body: bytes, connect_timeout_s: float, fresh: bool) -> Answer:
        """Send a POST on a pooled connection (a new one when `fresh`, or none is idle);
        return once it is sent. Raises ConnectFailed."""
        conn = None if fresh else self._take()
        if conn is None:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(connect_timeout_s):
                    _, conn = await loop.create_connection(
                        lambda: Answer(self), self.host, self.port
                    )
            except TimeoutError as e:
                raise ConnectFailed(f"no connection within {connect_timeout_s} s") from e
            except OSError as e:
                raise ConnectFailed(f"{type(e).__name__}: {e}") from e
        conn.send(
            b"POST %s HTTP/1.1\r\n%s\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode("latin-1"), self._head, len(body), body)
        )
        return conn

    def _take(self) -> Answer | None:
        # The newest idle connection first; one idle too long may be closing on the
        # replica's side (vLLM drops idle ones after 5 s), so it is closed here instead.
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            transport = conn._transport
            if (
                transport is not None
                and not transport.is_closing()
                and now - conn.idle_since < self.keepalive_s
            ):
                conn.reused = True
                return conn
            conn.close()
        return None

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class Pools:
    """One ReplicaPool per replica URL."""

    def __init__(self, headers: dict[str, str], keepalive_s: float) -> None:
        self._headers = headers
        self._keepalive_s = keepalive_s
        self._pools: dict[str, ReplicaPool] = {}

    def of(self, base_url: str) -> ReplicaPool:
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = ReplicaPool(base_url, self._headers, self._keepalive_s)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
