"""One socket write per loop turn for each client connection.

uvicorn writes an answer's head and its body with two `transport.write` calls, and each
is a send() of its own: for a whole answer, a tenth of the gateway's time went to the
second one (py-spy at saturation, docs/gateway.md). This transport wrapper gathers what
is written during one step of the loop and sends it once, right after that step; nothing
waits longer than the callbacks already queued.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps a client connection's transport; writes go out together, once per loop turn.

    Everything but write/close/abort is the wrapped transport's own.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()  # what was written before close() is sent, as with a plain transport
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
