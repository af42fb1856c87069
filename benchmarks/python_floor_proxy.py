"""The least work a Python proxy can do per request: the floor under raylm's gateway.

    python benchmarks/python_floor_proxy.py UPSTREAM_PORT PORT

uvloop and httptools, as raylm's gateway runs. Each client connection gets one kept-alive
upstream connection of its own; a request is parsed (to know where it ends), then its raw
bytes go upstream, and the answer's raw bytes come back as they arrive (parsed only to
know where it ends). No JSON, routing, auth, metrics, errors, retries nor ASGI. It is a
measuring stick for bench_gateway_capacity.py (`--floor`), not something to serve with.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, port: int) -> None:
        self.port = port
        self.parser = httptools.HttpRequestParser(self)
        self.request: list[bytes] = []
        self.upstream: _Upstream | None = None
        self.waiting: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(
            lambda: _Upstream(self), "127.0.0.1", self.port
        )
        for request in self.waiting:
            self.upstream.transport.write(request)  # type: ignore[union-attr]
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        self.request.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        request = b"".join(self.request)
        self.request.clear()
        if self.upstream is None or self.upstream.transport is None:
            self.waiting.append(request)
        else:
            self.upstream.transport.write(request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def main(upstream_port: int, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
