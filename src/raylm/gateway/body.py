"""Reading and parsing a request body the way a hostile client cannot exploit: bounded in
size while it arrives, any parse failure (syntax, encoding, nesting) a 400, and a client
that leaves while it sends told apart from a failure of the gateway, and one that leaves
while its answer is worked on noticed at once (`unless_client_leaves`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.types import Receive, Scope

from raylm.gateway.limits import GatewayLimits, Refusal, json_depth_over

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before the gateway answered (counted as 499)."""


_DECODER = msgspec.json.Decoder()


async def read_body(receive: Receive, limit: int) -> bytes | Refusal:
    """The whole body, read as it arrives; a Refusal once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(limit: int) -> Refusal:
    """The refusal of a body over `limit` bytes."""
    return Refusal(413, f"Request body over {limit} bytes.", None, "request_too_large")


def parse_object(body: bytes, limits: GatewayLimits) -> dict[str, Any] | Refusal:
    """The body as a JSON object, or the 400 that says why it is not one."""
    try:
        parsed = _DECODER.decode(body)
    except RecursionError:
        return _too_deep(limits)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as e:
        return Refusal(400, f"Malformed JSON in the request body: {e}.", None, "invalid_json")
    if not isinstance(parsed, dict):
        return Refusal(400, "The request body must be a JSON object.", None, "invalid_json")
    # Counting brackets is cheap and bounds the depth: walk only when there are many.
    if body.count(b"[") + body.count(b"{") > limits.max_json_depth and json_depth_over(
        parsed, limits.max_json_depth
    ):
        return _too_deep(limits)
    return parsed


def _too_deep(limits: GatewayLimits) -> Refusal:
    return Refusal(
        400,
        f"The request body nests arrays or objects deeper than {limits.max_json_depth} levels.",
        None,
        "json_too_deep",
    )


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client has gone (after its body was read, only that can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


DEPARTURE = "raylm.departure"
"""The scope key under which the gateway's connections (protocol.py) put a Departure."""


class Departure:
    """Tells the request's handler when its client leaves: the connection calls `left()`
    as it is lost before the answer is complete. A task per request awaiting
    `http.disconnect` did the same at a cost of about a tenth of a request's time."""

    __slots__ = ("gone", "on_gone")

    def __init__(self) -> None:
        self.gone = False
        self.on_gone: Callable[[], None] | None = None

    def left(self) -> None:
        self.gone = True
        on_gone, self.on_gone = self.on_gone, None
        if on_gone is not None:
            on_gone()


async def unless_client_leaves(
    work: Awaitable[T], receive: Receive, scope: Scope | None = None
) -> T:
    """`work`'s result; when the client leaves first, `work` is cancelled (its upstream
    request closed, so the replica stops generating) and ClientGone is raised.

    `work` runs in this task. The connection's Departure in `scope` cancels it; without
    one (another ASGI server), one watcher task awaiting `http.disconnect` does."""
    current = asyncio.current_task()
    assert current is not None
    outside = current.cancelling()  # cancellations already asked of the task: not ours
    gone = False

    def leave() -> None:
        nonlocal gone
        gone = True
        current.cancel()

    found = scope.get(DEPARTURE) if scope is not None else None
    departure = found if isinstance(found, Departure) else None
    watcher: asyncio.Task[None] | None = None
    if departure is not None:
        if departure.gone:
            leave()  # `work` starts, and stops at its first wait, cleaning up as it goes
        else:
            departure.on_gone = leave
    else:

        async def watch() -> None:
            await wait_disconnect(receive)
            leave()

        watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        # Ours alone becomes ClientGone; one from outside too (the server stopping in
        # the same moment) stays a cancellation.
        if gone and current.uncancel() <= outside:
            raise ClientGone from None
        raise
    finally:
        if departure is not None:
            departure.on_gone = None
        elif watcher is not None:
            watcher.cancel()
