"""Serving a gateway with uvicorn inside the caller's event loop.

uvicorn's own `serve()` takes over SIGINT/SIGTERM and exits the process when it cannot
bind; `raylm serve` owns its signals (it drains and stops replicas first) and wants a
clear error, so the socket is bound here and uvicorn's signal capture is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Iterator

import uvicorn

from raylm.errors import ConfigError
from raylm.gateway.acceptor import Acceptor
from raylm.gateway.app import Gateway
from raylm.gateway.peers import WorkerPeers
from raylm.gateway.protocol import guarded
from raylm.gateway.workers import WorkerProcesses

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own start, less its asyncio.Server: the Acceptor takes the sockets
        # (uvloop alone would accept one connection per loop turn; see acceptor.py).
        assert self.config.ssl is None, "the gateway serves plain HTTP (TLS in front of it)"
        await super().startup(sockets=[])
        factory = functools.partial(
            self.config.http_protocol_class,
            config=self.config,  # type: ignore[call-arg]  # typed as a bare asyncio.Protocol
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        acceptors = [Acceptor(sock, factory, self.config.backlog) for sock in sockets or []]
        self.servers = acceptors  # type: ignore[assignment]  # close() and wait_closed() alike


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); `reuse_port`: one
    that other gateway workers of this user may bind too (the kernel spreads
    connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it Nagle + delayed ACK add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    """A started gateway behind uvicorn: `await start()`, then `await stop()`.

    `workers` > 1 makes this worker 0 of that many processes on the port
    (raylm.gateway.workers); `reuse_port` is for the other workers, which join its port.
    """

    def __init__(
        self,
        gateway: Gateway,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        workers: int = 1,
        reuse_port: bool = False,
    ) -> None:
        limited = [k.name for k in gateway.settings.api_keys if k.limited]
        if workers > 1 and limited:
            raise ConfigError(
                f"Rate-limited API keys ({', '.join(limited)}) need a single gateway worker",
                why=f"each of the {workers} workers would keep its own count, letting a key "
                f"through up to {workers} times its limit",
                fix="Serve with one gateway worker",
                command="raylm serve --gateway-workers 1",
            )
        self.gateway = gateway
        self.host = host
        self.workers = workers
        self._reuse_port = reuse_port or workers > 1
        self._requested_port = port
        self.processes: WorkerProcesses | None = None
        """Workers 1..N-1, when `workers` > 1 (after start)."""
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
        port = self._requested_port
        if self.workers > 1:
            # A plain bind first: with SO_REUSEPORT alone, another gateway of this user
            # already on the port would be joined silently instead of refused.
            probe = bind_socket(self.host, port)
            port = int(probe.getsockname()[1])
            probe.close()
        self._sock = bind_socket(self.host, port, self._reuse_port)
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
        if self.workers > 1:
            await self._start_workers()
        logger.info("gateway listening on %s", self.url)

    async def _start_workers(self) -> None:
        g = self.gateway
        self.processes = WorkerProcesses(
            g.settings, g.source, g.upstream.events, self.host, self.port, self.workers
        )
        g.peers = WorkerPeers(self.processes.rundir, 0, self.workers)
        await g.peers.start(g.metrics.render)
        try:
            await self.processes.start()
        except BaseException:
            await self.stop(0)
            raise

    async def stop(self, drain_timeout_s: float | None = None) -> bool:
        """Drain (default bound: the gateway's drain_timeout_s), stop serving, close.
        True when every in-flight request finished."""
        timeout = (
            self.gateway.settings.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        )
        if self.processes is not None:
            # Every worker drains at once, each up to its drain_timeout_s.
            drains = await asyncio.gather(self.gateway.drain(timeout), self.processes.stop(timeout))
            drained = all(drains)
            if self.gateway.peers is not None:
                await self.gateway.peers.stop()
            self.processes = None
        else:
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
    gateway: Gateway,
    host: str,
    port: int,
    ready_event: asyncio.Event | None = None,
    workers: int = 1,
) -> None:
    """Serve `gateway` (in `workers` processes) until this task is cancelled; then drain
    and stop it."""
    server = GatewayServer(gateway, host, port, workers=workers)
    await server.start()
    if ready_event is not None:
        ready_event.set()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(server.stop())
