"""The byte transport between two nodes' agents: what moves a file's bytes, nothing else.

Owns the per-call `TransferSettings`, the requests that name a byte range (`FileSlice`,
`StreamTarget`), both transports (a direct `sendfile()` stream with its one-time-token
handshake, and Ray object chunks), the overlapped receive loop and the bandwidth pacer.
The agent (`agent.py`) decides which files to move and checks them; this module only
carries bytes into a sink.
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ModelError
from raylm.models.manifest import Manifest

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
PIPELINE_DEPTH = 4
PARALLEL_FILES = 4
STREAM_CONNECT_TIMEOUT_S = 10.0
STREAM_IDLE_TIMEOUT_S = 120.0
TRANSPORTS = ("auto", "stream", "object-store")
MIN_CHUNK = 1 << 16

Sink = Callable[[memoryview], None]


class TransferSettings(BaseModel):
    """How one sync moves bytes; sent with every call so concurrent syncs never share it."""

    model_config = ConfigDict(extra="forbid")

    parallel_files: int = Field(
        default=PARALLEL_FILES, description="Files received at once on one node."
    )
    limit_bytes_per_s: float | None = Field(
        default=None, description="Bandwidth cap for one node, in bytes per second; None: none."
    )
    chunk_bytes: int = Field(
        default=CHUNK, description="Buffer and Ray object size, in bytes (at least 64 KiB)."
    )
    pipeline_depth: int = Field(
        default=PIPELINE_DEPTH, description="Ray object chunks in flight per file."
    )
    transport: str = Field(default="auto", description="auto, stream or object-store.")

    def clamped(self) -> TransferSettings:
        """The settings with chunk size and depth raised to their workable minimum."""
        return self.model_copy(
            update={
                "chunk_bytes": max(MIN_CHUNK, self.chunk_bytes),
                "pipeline_depth": max(1, self.pipeline_depth),
                "parallel_files": max(1, self.parallel_files),
            }
        )


class FileSlice(BaseModel):
    """Bytes [offset, offset + size) of one model file, as asked of the sending agent."""

    model_config = ConfigDict(extra="forbid")

    ref: Manifest = Field(description="The model the file belongs to.")
    rel: str = Field(description="The file's path inside the model directory.")
    offset: int = Field(description="First byte to send.")
    size: int = Field(description="For a chunk: bytes to read; for a stream: the file's size.")


class StreamTarget(BaseModel):
    """Where the sending agent connects to stream a file, and the token it opens with."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="The receiving node's IP address.")
    port: int = Field(description="The receiver's one-time listening port.")
    token: bytes = Field(description="One-time token the sender writes first on the socket.")


class Pacer:
    """An optional bandwidth cap for one node, shared by its file threads."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.t0 = time.monotonic()
        self.total = 0
        self.lock = threading.Lock()

    def wait(self, n: int) -> None:
        if not self.limit:
            return
        with self.lock:
            self.total += n
            due = self.t0 + self.total / self.limit
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# ---- sending side ------------------------------------------------------------------------


def read_chunk(fd: int, offset: int, size: int) -> Any:
    """Read up to `size` bytes at `offset` into a numpy array (returned as `Any`, see below)."""
    # Function-local: only a node that serves chunks needs numpy.
    import numpy as np

    # A numpy array travels out-of-band: one copy into the object store here, and
    # the receiver reads it in place (zero-copy) instead of unpickling a bytes copy.
    buf: Any = np.empty(size, dtype=np.uint8)
    n = os.preadv(fd, [memoryview(buf)], offset)
    return buf[:n]


def send_stream(path: Path, piece: FileSlice, target: StreamTarget) -> int:
    """Stream bytes [offset, size) of a file to a receiving agent's socket."""
    with (
        socket.create_connection(
            (target.host, target.port), timeout=STREAM_CONNECT_TIMEOUT_S
        ) as conn,
        open(path, "rb") as f,
    ):
        conn.settimeout(STREAM_IDLE_TIMEOUT_S)
        conn.sendall(target.token)
        # socket.sendfile: zero-copy os.sendfile, waiting on the timeout-mode socket.
        size, offset = piece.size, piece.offset
        sent = conn.sendfile(f, offset, size - offset) if size > offset else 0
    return sent


# ---- receiving side ----------------------------------------------------------------------


def pull_objects(source: Any, piece: FileSlice, settings: TransferSettings, sink: Sink) -> None:
    """Chunks as Ray objects: works wherever Ray works, slower than a stream."""
    # Function-local: Ray reads its auth settings at import.
    import ray

    pending: deque[Any] = deque()
    next_off, size = piece.offset, piece.size
    while next_off < size or pending:
        while next_off < size and len(pending) < settings.pipeline_depth:
            n = min(settings.chunk_bytes, size - next_off)
            chunk = piece.model_copy(update={"offset": next_off, "size": n})
            pending.append(source.read_chunk.remote(chunk))
            next_off += n
        arr = ray.get(pending.popleft())
        data = memoryview(arr).cast("B")
        if not data:
            return
        sink(data)
        del data, arr  # release the object-store buffer now


def pull_stream(
    source: Any, piece: FileSlice, node: str, settings: TransferSettings, sink: Sink
) -> bool:
    """Ask the source agent (through Ray) to sendfile() the bytes to a socket here.

    The listener takes one connection, which must open with a one-time token handed
    over through Ray; the sha256 check catches anything else. Returns False when no
    connection came (e.g. a firewall), so the caller falls back to Ray objects.
    """
    # Function-local: Ray reads its auth settings at import.
    import ray

    token = secrets.token_bytes(16)
    with socket.create_server((node if node != "local" else "", 0)) as srv:
        srv.settimeout(STREAM_CONNECT_TIMEOUT_S)
        target = StreamTarget(host=node, port=srv.getsockname()[1], token=token)
        sending = source.send_file.remote(piece, target)
        try:
            conn, _ = srv.accept()
        except OSError as e:
            log.warning("no stream from the source for %s (%s); using Ray objects", piece.rel, e)
            return False
    with conn:
        conn.settimeout(STREAM_IDLE_TIMEOUT_S)
        got = b""
        while len(got) < len(token):
            part = conn.recv(len(token) - len(got))
            if not part:
                break
            got += part
        if not hmac.compare_digest(got, token):
            raise ModelError(
                f"An unexpected peer connected to node {node}'s sync stream",
                model=piece.ref.name,
                fix="check who else reaches this node, then sync again",
            )
        recv_overlapped(conn, piece.size - piece.offset, settings.chunk_bytes, sink)
    ray.get(sending)  # surfaces the sender's error, if any
    return True


def recv_overlapped(conn: socket.socket, total: int, chunk: int, sink: Sink) -> None:
    """Receive `total` bytes while a second thread writes and hashes the previous buffer.

    Three fixed buffers cycle between the two threads, so memory stays at 3 * chunk.
    """
    free: queue.Queue[memoryview] = queue.Queue()
    full: queue.Queue[tuple[memoryview, int] | None] = queue.Queue()
    for _ in range(3):
        free.put(memoryview(bytearray(chunk)))
    failure: list[BaseException] = []

    def drain() -> None:
        while (item := full.get()) is not None:
            buf, n = item
            try:
                if not failure:
                    sink(buf[:n])
            except BaseException as e:
                failure.append(e)
            free.put(buf)

    writer = threading.Thread(target=drain, daemon=True)
    writer.start()
    left = total
    try:
        while left > 0 and not failure:
            buf = free.get()
            filled = 0
            want = min(len(buf), left)
            while filled < want:  # fill the buffer: fewer, larger writes and hash updates
                n = conn.recv_into(buf[filled:want])
                if n == 0:
                    break
                filled += n
            if filled == 0:
                free.put(buf)
                break
            full.put((buf, filled))
            left -= filled
            if filled < want:
                break
    finally:
        full.put(None)
        writer.join()
    if failure:
        raise failure[0]
