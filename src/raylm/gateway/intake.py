"""What every route does with a request before any replica sees it: read the body within
the limits and resolve the model (the client leaving: raylm.gateway.body)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from raylm.gateway.body import parse_object, read_body
from raylm.gateway.limits import GatewayLimits, Refusal
from raylm.gateway.responses import HttpError, error_response, refused, unavailable
from raylm.gateway.routing import ReplicaTable


async def read_json(request: Request, limits: GatewayLimits) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object and its exact bytes; HttpError with the 4xx that says why
    not; ClientGone when the client leaves while sending it."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
        too_large = f"Request body over {limits.max_body_bytes} bytes."
        raise refused(Refusal(413, too_large, None, "request_too_large"))
    body = await read_body(request.receive, limits.max_body_bytes)
    if isinstance(body, Refusal):
        raise refused(body)
    parsed = parse_object(body, limits)
    if isinstance(parsed, Refusal):
        raise refused(parsed)
    return parsed, body


def context_len(table: ReplicaTable, model: str) -> int | None:
    """The context length of `model`'s replicas, when they report it."""
    lens = [
        r.max_model_len for r in table.replicas if r.model == model and r.max_model_len is not None
    ]
    return min(lens) if lens else None


def resolve_model(table: ReplicaTable, requested: object, retry_after_s: int) -> str:
    """The model a request is for; HttpError (OpenAI-style) when it cannot be served."""
    models = table.models()
    if requested is None:
        if len(models) == 1:
            return models[0]
        if not models:
            raise HttpError(unavailable("No model is being served yet.", retry_after_s))
        raise HttpError(
            error_response(
                400,
                f"`model` is required: several models are served ({', '.join(models)}).",
                param="model",
                code="model_required",
            )
        )
    if not isinstance(requested, str):
        raise HttpError(error_response(400, "`model` must be a string.", param="model"))
    if requested not in models:
        served = ", ".join(models) or "none yet"
        raise HttpError(
            error_response(
                404,
                f"The model `{requested}` does not exist. Served: {served}.",
                param="model",
                code="model_not_found",
            )
        )
    return requested
