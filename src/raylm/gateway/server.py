"""Serving a gateway with uvicorn inside the caller's event loop.

uvicorn's own `serve()` takes over SIGINT/SIGTERM and exits the process when it cannot
bind; `raylm serve` owns its signals (it drains and stops replicas first) and wants a
clear error, so the socket is bound here and uvicorn's signal capture is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from raylm.errors import ConfigError
from raylm.gateway.app import Gateway
from raylm.gateway.protocol import guarded

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it Nagle + delayed ACK add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"The gateway cannot listen on {host}:{port}",
            why=e.strerror or str(e),
            fix="Pick another port with --port, or stop what is using this one",
            command=f"ss -ltnp 'sport = :{port}'",
        ) from e
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class GatewayServer:
    """A started gateway behind uvicorn: `await start()`, then `await stop()`."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.gateway = gateway
        self.host = host
        self._requested_port = port
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        if self._sock is None:
            return self._requested_port
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind, start the gateway's refresh, and serve; returns once accepting."""
        self._sock = bind_socket(self.host, self._requested_port)
        await self.gateway.start()
        settings = self.gateway.settings
        config = uvicorn.Config(
            self.gateway.app,
            lifespan="off",
            # httptools with header/body deadlines and a connection cap (protocol.py).
            http=guarded(settings.limits, settings.retry_after_s),
            access_log=False,
            log_level="warning",
            server_header=False,
            date_header=False,
            # X-Forwarded-For is not used: its middleware would only cost time per request.
            proxy_headers=False,
            timeout_keep_alive=settings.limits.keep_alive_timeout_s,  # type: ignore[arg-type]
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # surfaces why it could not start
                raise ConfigError("The gateway stopped while starting", fix="See the log above")
            await asyncio.sleep(0.01)
        logger.info("gateway listening on %s", self.url)

    async def stop(self, drain_timeout_s: float | None = None) -> bool:
        """Drain (default bound: the gateway's drain_timeout_s), stop serving, close.
        True when every in-flight request finished."""
        timeout = (
            self.gateway.settings.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        )
        drained = await self.gateway.drain(timeout)
        # Closing the upstream pool first ends leftover streams with an error event,
        # rather than uvicorn cutting them off mid-body.
        await self.gateway.stop()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self._sock is not None:
            self._sock.close()
        self._server = self._task = self._sock = None
        return drained


async def run_gateway(
    gateway: Gateway, host: str, port: int, ready_event: asyncio.Event | None = None
) -> None:
    """Serve `gateway` until this task is cancelled; then drain and stop it."""
    server = GatewayServer(gateway, host, port)
    await server.start()
    if ready_event is not None:
        ready_event.set()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(server.stop())
