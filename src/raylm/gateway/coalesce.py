"""An answer's head and the write after it in one send, for each client connection.

uvicorn writes an answer's head and its body with two `transport.write` calls, and each
is a send() of its own: for a whole answer, a tenth of the gateway's time went to the
second one (py-spy at saturation, docs/gateway.md). This transport wrapper holds a head
(a write that starts `HTTP/`): the next write goes out with it at once, and if none
comes in the same step of the loop, the head goes out alone right after that step. Every
other write goes out at once, as before: a stream's events never wait.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps a client connection's transport, sending a held head with the next write.

    Everything but write/close/abort is the wrapped transport's own.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif data[:5] == b"HTTP/":
            self._head = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._flush()  # what was written before close() is sent first
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
