"""The OpenAI routes: chat and completions passed through to a replica as raw bytes (the
body is parsed only to read `model` and `stream`; streams are relayed chunk by chunk, never
re-encoded), and the model list."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from raylm.gateway.body import unless_client_leaves
from raylm.gateway.intake import context_len, read_json, resolve_model
from raylm.gateway.limits import admit
from raylm.gateway.prefix import session_of
from raylm.gateway.responses import HttpError, error_response, json_response, refused
from raylm.gateway.upstream import Upstream

_DECODER = json.JSONDecoder()


def usage_of(answer: bytes) -> object:
    """The `usage` object of a whole OpenAI answer, parsed alone: the answer itself may be
    long (n choices, logprobs) and is passed on as bytes. JSON escapes every quote inside a
    string, so a raw `"usage":` is a key; vLLM writes the answer's own after `choices`.
    None when there is none or it does not parse."""
    at = answer.rfind(b'"usage":')
    if at < 0:
        return None
    try:
        usage, _ = _DECODER.raw_decode(answer[at + 8 :].decode().lstrip())
    except ValueError:  # UnicodeDecodeError is one
        return None
    return usage


class OpenAIRoutes:
    """`/v1/chat/completions`, `/v1/completions` and `/v1/models`."""

    def __init__(self, upstream: Upstream, started_at: float) -> None:
        self.up = upstream
        self.started_at = started_at

    async def chat(self, request: Request) -> Response:
        return await self._proxy(request, "chat", "/v1/chat/completions", "messages")

    async def completions(self, request: Request) -> Response:
        return await self._proxy(request, "completions", "/v1/completions", "prompt")

    async def _proxy(self, request: Request, route: str, path: str, required: str) -> Response:
        t0 = time.perf_counter()
        settings = self.up.settings
        parsed, body = await read_json(request, settings.limits)
        if required not in parsed:
            missing = f"Missing required field `{required}`."
            raise HttpError(error_response(400, missing, param=required))
        stream = parsed.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise HttpError(error_response(400, "`stream` must be true or false.", param="stream"))
        model = resolve_model(self.up.table, parsed.get("model"), settings.retry_after_s)
        refusal = admit(parsed, settings.limits, context_len(self.up.table, model))
        if refusal is not None:
            raise refused(refusal)
        session = session_of(parsed, request.headers.get("x-session-id"))
        key = self.up.table.route_request(model, route, parsed, session)
        if stream:
            return await self.up.stream(route, key, path, body, t0)
        work = self.up.buffered(route, key, path, body)
        up = await unless_client_leaves(work, request.receive, request.scope)
        if up.status == 200:
            self._count_usage(model, up.body)
        return Response(up.body, status_code=up.status, media_type=up.content_type)

    def _count_usage(self, model: str, body: bytes) -> None:
        self.up.metrics.count_usage(model, usage_of(body))

    async def models(self, request: Request) -> Response:
        data = []
        for status in self.up.table.status():
            if not status.ready:
                continue
            entry: dict[str, Any] = {
                "id": status.model,
                "object": "model",
                "created": int(self.started_at),
                "owned_by": "raylm",
            }
            # vLLM lists the model's directory as `root`; clients (vllm bench) find the
            # tokenizer there.
            root = next(
                (r.model_path for r in self.up.table.replicas if r.model == status.model), ""
            )
            if root:
                entry["root"] = root
            max_len = context_len(self.up.table, status.model)
            if max_len is not None:
                entry["max_model_len"] = max_len
            data.append(entry)
        return json_response({"object": "list", "data": data})
