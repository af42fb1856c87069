"""Two writes in one send for each client connection.

uvicorn writes an answer's head and its body with two `transport.write` calls, and each
is a send() of its own: for a whole answer, a tenth of the gateway's time went to the
second one (py-spy at saturation, docs/gateway.md). This transport wrapper holds a write
made while nothing is held: the next write in the same step of the loop goes out with it
at once, and if none comes, it goes out right after that step. So a whole answer leaves
in one send and no later than before; a stream's head waits only for the step to end.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps a client connection's transport, sending a held write with the next one.

    Everything but write/close/abort is the wrapped transport's own.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._held: bytes | None = None
        self._flush_due = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if held is None:
            self._held = bytes(data)
            if not self._flush_due:
                self._flush_due = True
                self._loop.call_soon(self._flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def _flush(self) -> None:
        self._flush_due = False
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        held, self._held = self._held, None  # what was written before close() is sent
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
