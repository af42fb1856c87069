"""Accepting every waiting connection at once, on any event loop.

uvloop's libuv (1.45 and later, libuv#3696) accepts one connection per turn of the event
loop. A gateway at saturation spends milliseconds per turn, so a burst of new connections
waits turn after turn: 64 opened at once took 200 ms to be accepted, and their first
requests made the whole p99.9 tail of benchmarks/bench_gateway_capacity.py. asyncio's own
loop accepts up to the backlog per turn; this does the same on any loop and hands each
socket to the loop as an accepted connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Out of descriptors or buffers: accepting again at once would spin; asyncio waits 1 s.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PAUSE_S = 1.0


class Acceptor:
    """Accepts connections on a listening, non-blocking `sock` for `protocol_factory`.

    It stands in for the asyncio.Server that uvicorn keeps: `close()` stops accepting,
    `wait_closed()` returns once the connections it was still opening are open.
    """

    def __init__(
        self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol], backlog: int
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._factory = protocol_factory
        self._backlog = backlog
        self._opening: set[asyncio.Task[None]] = set()
        self._closed = False
        self._paused: asyncio.TimerHandle | None = None
        self._loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except ConnectionAbortedError:
                continue  # the client gave up while queued; others may be waiting
            except OSError as e:
                if e.errno not in _RESOURCE_ERRNOS:
                    raise
                logger.error("cannot accept a connection (%s); pausing %s s", e, _PAUSE_S)
                self._loop.remove_reader(self._sock.fileno())
                self._paused = self._loop.call_later(_PAUSE_S, self._resume)
                return
            try:
                conn.setblocking(False)
                # Without it Nagle + delayed ACK add ~40 ms to answers (server.bind_socket).
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset while queued
                conn.close()
                continue
            task = self._loop.create_task(self._open(conn))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _open(self, conn: socket.socket) -> None:
        try:
            _, protocol = await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as e:  # reset before its transport existed, or the loop closing
            logger.debug("an accepted connection failed to open: %s", e)
            conn.close()
            return
        if self._closed:
            # Accepted as the server began to stop: uvicorn asked the connections it knew
            # then to finish, and this one was not among them yet.
            shutdown = getattr(protocol, "shutdown", None)
            if shutdown is not None:
                shutdown()

    def _resume(self) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
        else:
            self._loop.remove_reader(self._sock.fileno())

    async def wait_closed(self) -> None:
        if self._opening:
            await asyncio.gather(*self._opening, return_exceptions=True)
