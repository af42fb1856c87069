"""The key every replica requires: an ASGI middleware raylm adds to vLLM's server.

A replica listens on its node's IP so the gateway can reach it, which also lets anyone on
the network reach it. vLLM's own `--api-key` guards only `/v1` (its `/invocations` route,
always mounted, runs completions without a key), so raylm adds this middleware instead:
every path but `/health` needs the deployment's private replica key, which only the gateway
and raylm's probes hold. The key comes in `RAYLM_REPLICA_KEY`, the environment rather than
the command line, which `ps` shows to every user. Without the variable it does nothing.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

KEY_ENV = "RAYLM_REPLICA_KEY"
PATH = "raylm.serve.replica_auth.ReplicaAuth"
"""What `vllm serve --middleware` is given."""
OPEN_PATHS = frozenset({"/health"})

_DENIED = json.dumps(
    {
        "error": {
            "message": "This replica serves raylm's gateway only: send requests to the gateway.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
).encode()


class ReplicaAuth:
    """Pure ASGI middleware: 401 for any request without `Authorization: Bearer <key>`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        key = os.environ.get(KEY_ENV, "")
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            self.expected is None
            or scope["type"] not in ("http", "websocket")
            or scope.get("path") in OPEN_PATHS
        ):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or ():
            if name == b"authorization" and hmac.compare_digest(value, self.expected):
                await self.app(scope, receive, send)
                return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _DENIED})
