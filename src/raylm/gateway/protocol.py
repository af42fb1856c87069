"""The gateway's HTTP/1.1 connection handling: uvicorn's httptools protocol plus what it
lacks against slow or hostile clients.

uvicorn closes an idle kept-alive connection, but puts no deadline on a request's headers
or body: a client that opens a connection and sends nothing, half the headers, or headers
and no body, holds it forever, and enough of them exhaust the gateway (slowloris). Here a
request's headers must arrive within `header_timeout_s` (counted from the connection, or
from the request's first byte on a kept-alive one) and its body within `body_timeout_s`;
a late one gets 408 and the connection is closed. Past `max_connections` open connections
a new one gets 503 with Retry-After, in the OpenAI error shape, and is closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from raylm.gateway.body import DEPARTURE, Departure
from raylm.gateway.coalesce import CoalescingTransport
from raylm.gateway.limits import GatewayLimits
from raylm.gateway.responses import error_body


def _raw_response(status: str, message: str, code: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(message, type="invalid_request_error", code=code)).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """One client connection with deadlines; make a subclass per gateway with `guarded()`."""

    limits: GatewayLimits = GatewayLimits()
    retry_after_s: int = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    # -------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Never registered: the server neither counts nor shuts down this one.
            self._refused = True
            transport.write(
                _raw_response(
                    "503 Service Unavailable",
                    f"The gateway has {self.limits.max_connections} open connections, its "
                    "limit; retry shortly.",
                    "too_many_connections",
                    f"retry-after: {self.retry_after_s}\r\n",
                )
            )
            transport.close()
            return
        super().connection_made(transport)
        # Each answer's head and body leave in one send() (coalesce.py).
        self.transport = CoalescingTransport(transport)  # type: ignore[assignment]
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            departure = cycle.scope.get(DEPARTURE)
            if isinstance(departure, Departure):
                departure.left()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    # -------------------------------------------------------------- parser hooks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the next request on a kept-alive connection
            self._arm(self.limits.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._disarm()
        self.scope[DEPARTURE] = Departure()  # type: ignore[literal-required]  # the cycle shares it
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # -------------------------------------------------------------- deadlines

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._late, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        started = self.cycle is not None and self.cycle.response_started
        if not started:
            self.transport.write(
                _raw_response(
                    "408 Request Timeout",
                    f"The request's {what} did not arrive within {seconds:g} s.",
                    "request_timeout",
                )
            )
        self.transport.close()


def guarded(limits: GatewayLimits, retry_after_s: int) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn runs for a gateway with these limits."""
    return type(
        "GatewayHttpProtocol",
        (GuardedHttpProtocol,),
        {"limits": limits, "retry_after_s": retry_after_s},
    )
