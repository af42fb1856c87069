"""The sync's overlapped receive on its own (a socket pair, no Ray): bytes arrive whole and
in order through three cycling buffers, a failing write stops it without a hang, and a
sender that stops early leaves the shortfall for the caller's hash check to find."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from raylm.models.sync.transport import recv_overlapped


def _send(conn: socket.socket, data: bytes, piece: int, close_after: int | None = None) -> None:
    view = memoryview(data)[: close_after if close_after is not None else len(data)]
    try:
        for i in range(0, len(view), piece):
            conn.sendall(view[i : i + piece])
    except ConnectionError:
        pass  # the receiver gave up (the failing-write test)
    finally:
        conn.close()


def test_every_byte_arrives_in_order_through_the_cycling_buffers() -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    a, b = socket.socketpair()
    sender = threading.Thread(target=_send, args=(a, data, 70_001))
    sender.start()
    got = hashlib.sha256()
    sizes: list[int] = []

    def sink(buf: memoryview) -> None:
        sizes.append(len(buf))
        got.update(buf)

    recv_overlapped(b, len(data), 1024 * 1024, sink)
    sender.join()
    b.close()
    assert got.digest() == hashlib.sha256(data).digest()
    assert max(sizes) <= 1024 * 1024 and sum(sizes) == len(data)
    assert len(sizes) < 20  # buffers are filled before they are handed on, not per recv


def test_a_failing_write_stops_the_receive_and_is_raised() -> None:
    data = os.urandom(3 * 1024 * 1024)
    a, b = socket.socketpair()
    sender = threading.Thread(target=_send, args=(a, data, 65_536), daemon=True)
    sender.start()
    calls = 0

    def sink(buf: memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        recv_overlapped(b, len(data), 256 * 1024, sink)
    b.close()
    sender.join(10)
    assert calls == 2


def test_a_sender_that_stops_early_leaves_the_shortfall() -> None:
    data = os.urandom(1024 * 1024)
    a, b = socket.socketpair()
    threading.Thread(target=_send, args=(a, data, 4096, 300_000)).start()
    got = bytearray()
    recv_overlapped(b, len(data), 128 * 1024, lambda buf: got.extend(buf))
    b.close()
    assert bytes(got) == data[:300_000]
