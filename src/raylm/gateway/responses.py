"""OpenAI-style error bodies and the JSON answers the gateway makes itself."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from raylm.gateway.limits import Refusal
from raylm.gateway.rate_limits import RateRefusal


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}` as OpenAI and vLLM send it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return json_response(
        error_body(message, type=type, param=param, code=code), status=status, headers=headers
    )


def unavailable(message: str, retry_after_s: int, code: str = "no_ready_replica") -> Response:
    """503 with Retry-After: the request was fine, the serving side is not ready for it."""
    return error_response(
        503,
        message,
        type="service_unavailable",
        code=code,
        headers={"Retry-After": str(retry_after_s)},
    )


def error_message(body: bytes) -> str:
    """The human message inside an upstream error body (vLLM's are OpenAI-style)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:500]
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(parsed.get("detail"), str):
            return str(parsed["detail"])
    return body.decode(errors="replace").strip()[:500]


def replica_error(
    replica_id: str, status: int, body: bytes, content_type: str
) -> tuple[int, bytes, str]:
    """A replica's error answer as the client gets it. The replica's own failure (500 and
    other 5xx, e.g. vLLM's EngineDeadError while its engine is replaced) is a bad gateway
    to the client, never a 500 of ours; its 4xx and 502-504 pass through unchanged."""
    if status < 500 or status in (502, 503, 504):
        return status, body, content_type
    message = f"Replica {replica_id} failed while answering ({status}: {error_message(body)})."
    err = error_body(message, type="upstream_error", code="replica_error")
    return 502, json.dumps(err, separators=(",", ":")).encode(), "application/json"


def sse_error_event(message: str, code: int = 502) -> bytes:
    """The last event of a stream whose replica failed mid-way."""
    body = error_body(message, type="upstream_error", code=code)
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class HttpError(Exception):
    """An answer a route gives up with: raised anywhere under a route, sent once by the
    gateway's dispatch (so helpers return values, never `Response | value`)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def refused(r: Refusal) -> HttpError:
    """A limit's refusal as an OpenAI error answer. A body too large also ends the
    connection: the client would otherwise go on sending the rest of it."""
    headers = {"Connection": "close"} if r.status == 413 else None
    return HttpError(
        error_response(r.status, r.message, param=r.param, code=r.code, headers=headers)
    )


def rate_limited(r: RateRefusal, key: str) -> Response:
    """429 with Retry-After, in OpenAI's rate-limit shape (`type` says which limit)."""
    return error_response(
        429,
        r.message(key),
        type=r.limit,
        code="rate_limit_exceeded",
        headers={"Retry-After": str(r.retry_after_s)},
    )
