"""What a replica's answer becomes for the client: a whole answer (`Buffered`), or a
stream relayed as it comes (`RelayResponse`), whose replica is released exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from raylm.gateway.body import ClientGone, unless_client_leaves
from raylm.replica import ReplicaInfo


@dataclass
class Buffered:
    """A whole answer from a replica."""

    status: int
    body: bytes
    content_type: str
    replica: ReplicaInfo


class RelayResponse(StreamingResponse):
    """A stream whose replica is released exactly once, however it ends (done, broken,
    or the client gone before the first byte, when the generator never even started).
    `client_gone` tells, afterwards, whether the client left before the stream ended."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], object], **kw: Any
    ) -> None:
        super().__init__(self._to_the_end(content), **kw)
        self._on_close: Callable[[], object] | None = on_close
        self.client_gone = True

    async def _to_the_end(self, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in content:
            yield chunk
        self.client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # The stream is cancelled when the client disconnects; closing the unfinished
            # upstream answer (on_close) then makes vLLM abort the request. (Starlette's
            # own watch, an anyio task group per response, cost a tenth of a stream's time.)
            await unless_client_leaves(self.stream_response(send), receive, scope)
        except ClientGone:
            pass  # client_gone stays True
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()
