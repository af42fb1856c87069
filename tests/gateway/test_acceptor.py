"""The gateway's Acceptor (raylm.gateway.acceptor): every waiting connection is accepted
in one turn of uvloop's loop (uvloop alone takes one per turn); running out of
descriptors pauses accepting instead of failing or spinning; close() stops it."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

import raylm.gateway.acceptor as acceptor_mod
from raylm.gateway.acceptor import Acceptor


class _Counted(asyncio.Protocol):
    opened: list[asyncio.BaseTransport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.opened.append(transport)


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _connect(port: int, n: int) -> list[socket.socket]:
    # Blocking connects complete in the kernel's backlog, before anything is accepted.
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(main())


async def _close_all(
    acc: Acceptor,
    opened: list[asyncio.BaseTransport],
    clients: list[socket.socket],
    listener: socket.socket,
) -> None:
    acc.close()
    await acc.wait_closed()
    for t in opened:
        t.close()
    for c in clients:
        c.close()
    listener.close()


def test_a_burst_of_connections_is_accepted_in_one_turn_on_uvloop() -> None:
    async def main() -> None:
        opened: list[asyncio.BaseTransport] = []
        factory = type("P", (_Counted,), {"opened": opened})
        listener = _listener()
        clients = _connect(listener.getsockname()[1], 32)
        acc = Acceptor(listener, factory, backlog=2048)
        try:
            # One turn to see the socket readable and accept all, a few to open them;
            # one accept per turn would have opened at most 6.
            await _turns(6)
            assert len(opened) == 32
            # Each is a working connection with Nagle off.
            sock = opened[0].get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            await _close_all(acc, opened, clients, listener)

    _run(main)


def test_out_of_descriptors_pauses_accepting_then_resumes() -> None:
    class _Exhausted(socket.socket):
        failures = 1

        def accept(self) -> tuple[socket.socket, Any]:
            if _Exhausted.failures:
                _Exhausted.failures -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    async def main() -> None:
        opened: list[asyncio.BaseTransport] = []
        factory = type("P", (_Counted,), {"opened": opened})
        plain = _listener()
        listener = _Exhausted(plain.family, plain.type, plain.proto, fileno=plain.detach())
        clients = _connect(listener.getsockname()[1], 3)
        acc = Acceptor(listener, factory, backlog=2048)
        try:
            await _turns(5)
            assert opened == [], "accepting went on while out of descriptors"
            assert acc._paused is not None, "not paused"
            await asyncio.sleep(acceptor_mod._PAUSE_S + 0.3)
            await _turns(6)
            assert len(opened) == 3, "accepting did not resume after the pause"
        finally:
            await _close_all(acc, opened, clients, listener)

    _run(main)


def test_close_stops_accepting() -> None:
    async def main() -> None:
        opened: list[asyncio.BaseTransport] = []
        factory = type("P", (_Counted,), {"opened": opened})
        listener = _listener()
        acc = Acceptor(listener, factory, backlog=2048)
        acc.close()
        clients = _connect(listener.getsockname()[1], 2)
        try:
            await _turns(10)
            assert opened == []
        finally:
            for c in clients:
                c.close()
            listener.close()

    _run(main)


def test_a_connection_accepted_as_the_server_stops_is_asked_to_finish() -> None:
    # uvicorn asks the connections it knows to finish when it stops; one still opening
    # then would be missed and stay kept-alive.
    async def main() -> None:
        opened: list[asyncio.BaseTransport] = []
        finishing: list[object] = []

        class _Finishing(_Counted):
            def shutdown(self) -> None:
                finishing.append(self)

        factory = type("P", (_Finishing,), {"opened": opened})
        listener = _listener()
        clients = _connect(listener.getsockname()[1], 3)
        acc = Acceptor(listener, factory, backlog=2048)
        try:
            acc._accept()  # the three are accepted, their transports not yet open
            acc.close()
            await acc.wait_closed()
            assert len(opened) == 3 and len(finishing) == 3
        finally:
            await _close_all(acc, opened, clients, listener)

    _run(main)
