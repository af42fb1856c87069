"""One relayed stream: a replica's SSE bytes passed through as they come, its usage counted
before the client sees `[DONE]`, and its end when the replica fails, goes quiet or closes
early: an error event the client can read, never a silently cut answer."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from raylm.gateway.h1 import UpstreamError
from raylm.gateway.responses import sse_error_event

logger = logging.getLogger(__name__)

# Enough of a stream's end to find its final usage chunk and the [DONE] marker.
_TAIL_BYTES = 8192
_DONE = b"data: [DONE]"


async def relay_sse(
    chunks: AsyncIterator[bytes],
    replica_id: str,
    idle_s: float,
    on_first: Callable[[], None],
    on_usage: Callable[[Any], None],
    on_broken: Callable[[], None],
    stopping: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """`chunks` (the replica's, each within `idle_s`) passed on. `on_first` at the first
    byte, `on_usage` with the final usage (None without), `on_broken` when the stream did
    not end whole; `stopping()` says whether the gateway itself is stopping."""
    tail = b""
    first, done = True, False
    try:
        async for chunk in chunks:
            if first:
                first = False
                on_first()
            tail = (tail + chunk)[-_TAIL_BYTES:]
            if not done and tail.rstrip().endswith(_DONE):
                # Count before the client sees [DONE]: a client that stops there closes
                # the connection, and Starlette then cancels this generator.
                done = True
                on_usage(_usage(tail))
            yield chunk
    except (UpstreamError, TimeoutError) as e:
        if done:  # the answer was whole; only its closing bytes were lost
            return
        on_broken()
        if stopping():
            yield sse_error_event("The gateway stopped before the stream finished.", 503)
            return
        why = (
            f"no data for {idle_s} s" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        )
        logger.warning("stream from %s broke: %s", replica_id, why)
        yield sse_error_event(f"Replica {replica_id} failed mid-stream: {why}.")
        return
    if not done:
        on_broken()
        yield sse_error_event(f"Replica {replica_id} closed the stream before it was complete.")


def _usage(tail: bytes) -> Any:
    """The usage of the last JSON event (stream_options.include_usage), or None."""
    for event in reversed(tail.split(b"\n\n")):
        event = event.strip()
        if not event.startswith(b"data: {"):
            continue
        try:
            parsed = json.loads(event[6:])
        except ValueError:
            return None
        return parsed.get("usage") if isinstance(parsed, dict) else None
    return None
