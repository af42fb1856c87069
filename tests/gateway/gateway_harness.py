"""Helpers of the gateway tests: replicas to route on, and gateways served by uvicorn
in a thread of their own so the tests can use ordinary blocking clients (httpx, openai).
(A module with a unique name, importable because pytest puts this folder on sys.path.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from raylm.cluster.ports import free_port
from raylm.gateway import GatewayServer, GatewaySettings, StaticReplicaSource, create_gateway
from raylm.gateway.app import Gateway
from raylm.replica import ReplicaInfo, ReplicaState

MODEL = "smollm2-135m-instruct"
MAX_MODEL_LEN = 2048
T = TypeVar("T")


def replica(
    url: str,
    replica_id: str = "r0",
    state: ReplicaState = ReplicaState.READY,
    **kw: Any,
) -> ReplicaInfo:
    return ReplicaInfo(
        replica_id=replica_id,
        model=MODEL,
        url=url,
        node="127.0.0.1",
        nodes=["127.0.0.1"],
        state=state,
        max_model_len=MAX_MODEL_LEN,
        **kw,
    )


def wait_for(cond: Callable[[], object], timeout_s: float) -> None:
    """Return once `cond()` is true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


def raw_request(url: str, path: str, body: bytes) -> socket.socket:
    """A POST of a JSON `body` sent on a plain socket, left open: the caller reads the
    answer, or closes it to leave as a client that gives up does."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return s


def dead_url() -> str:
    """A URL where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


class RunningGateway:
    """A gateway served on 127.0.0.1 from an event loop in a background thread."""

    def __init__(self, replicas: list[ReplicaInfo], workers: int = 1, **settings: Any) -> None:
        self.source = StaticReplicaSource(replicas)
        self.gateway: Gateway = create_gateway(self.source, GatewaySettings(**settings))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = GatewayServer(self.gateway, "127.0.0.1", 0, workers=workers)

    def __enter__(self) -> RunningGateway:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.stop(drain_timeout_s=5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return self.server.url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close_server(self, server: asyncio.Server) -> None:
        """Close a server this gateway's loop runs. asyncio's servers are not thread-safe:
        closed from another thread, one racing a connection's end raised TypeError."""

        async def close() -> None:
            server.close()

        self.call(close())

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 120, **kw})

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample in this gateway's registry (0 when absent)."""
        value = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_FIRST_EVENT = (
    b'data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"'
    + MODEL.encode()
    + b'","choices":[{"index":0,"delta":{"role":"assistant","content":"Par"},'
    b'"finish_reason":null}]}\n\n'
)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def start_faulty_replica(mode: str) -> tuple[asyncio.Server, str]:
    """A stand-in for a replica that fails in one way, to inject that fault:

    - "drop": sends the first SSE event, then the connection drops;
    - "hang": sends the first SSE event, then nothing, forever;
    - "truncated": sends the first SSE event and ends the body cleanly, without [DONE];
    - "503": answers 503, as a vLLM server shutting down does;
    - "500": answers 500, as vLLM does for a request in flight when its engine dies;
    - "late-503": answers 503 after 2 s (a replica that starts shutting down mid-request);
    - "silent": reads the request and never answers;
    - "idle-close": answers the first request on a connection (200, kept alive), then
      closes it when the next one comes, unanswered: a server closing an idle connection
      just as a request goes out on it (vLLM's closes one idle for 5 s).
    """

    async def read_request(reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if mode == "idle-close":
            body = json.dumps({"id": "x", "object": "text_completion", "model": MODEL,
                               "choices": [{"index": 0, "text": "Paris", "finish_reason":
                                            "length"}]}).encode()  # fmt: skip
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await read_request(reader)
            writer.close()
            return
        if mode == "silent":
            await reader.read()
            writer.close()
            return
        if mode == "late-503":
            await asyncio.sleep(2.0)
        if mode in ("503", "500", "late-503"):
            status = mode[-3:]  # "late-503" answers as "503" does
            message = "shutting down" if status == "503" else "EngineCore encountered an issue."
            reason = "Service Unavailable" if status == "503" else "Internal Server Error"
            error = json.dumps({"error": {"message": message, "type": "x", "code": int(status)}})
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n".encode()
                + f"content-length: {len(error)}\r\nconnection: close\r\n\r\n".encode()
                + error.encode()
            )
        else:
            writer.write(_SSE_HEAD + _chunk(_FIRST_EVENT))
        await writer.drain()
        if mode == "hang":
            await reader.read()  # until the gateway gives up and closes the connection
        if mode == "truncated":
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"
