"""Serving a gateway: socket setup and clear errors instead of uvicorn's exit."""

from __future__ import annotations

import socket

import pytest

from raylm.errors import ConfigError
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
