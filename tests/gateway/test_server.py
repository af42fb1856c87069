"""Serving a gateway: socket setup and clear errors instead of uvicorn's exit."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn
from gateway_harness import free_port

from raylm.errors import ConfigError
from raylm.gateway import GatewaySettings, StaticReplicaSource, create_gateway, run_gateway
from raylm.gateway.server import bind_socket


def test_listening_socket_is_tcp_so_asyncio_disables_nagle() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; without it
    # every answer waited ~40 ms for a delayed ACK (measured by the latency benchmark).
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        client = socket.create_connection(sock.getsockname())
        sock.setblocking(True)
        conn, _ = sock.accept()
        assert conn.proto == socket.IPPROTO_TCP
        conn.close()
        client.close()
    finally:
        sock.close()


def test_busy_port_is_a_config_error() -> None:
    first = bind_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as e:
            bind_socket("127.0.0.1", port)
        assert f"127.0.0.1:{port}" in str(e.value) and "--port" in str(e.value)
    finally:
        first.close()


def test_uvicorn_sees_an_asgi3_app() -> None:
    config = uvicorn.Config(create_gateway(StaticReplicaSource([])).app)
    config.load()
    assert config.interface == "asgi3"


def test_run_gateway_serves_until_cancelled() -> None:
    port = free_port()

    async def scenario() -> None:
        gateway = create_gateway(StaticReplicaSource([]), GatewaySettings(drain_timeout_s=1))
        ready = asyncio.Event()
        task = asyncio.create_task(run_gateway(gateway, "127.0.0.1", port, ready))
        await asyncio.wait_for(ready.wait(), 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.get("/health")
            assert r.status_code == 503 and r.json()["message"] == "No replica is known yet."
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as c:
                await c.get(f"http://127.0.0.1:{port}/health")

    asyncio.run(scenario())
