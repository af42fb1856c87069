"""The native routes, `/generate` and `/batch_generate`: validated parameters, run as
completions on a replica, answered in raylm's own shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from raylm.gateway.body import unless_client_leaves
from raylm.gateway.intake import context_len, read_json, resolve_model
from raylm.gateway.limits import admit
from raylm.gateway.native import (
    BatchGenerateRequest,
    GenerateRequest,
    GenerateResult,
    SamplingFields,
    validation_message,
)
from raylm.gateway.responses import (
    HttpError,
    error_message,
    error_response,
    json_response,
    refused,
)
from raylm.gateway.upstream import Upstream


class NativeRoutes:
    """`/generate` and `/batch_generate`."""

    def __init__(self, upstream: Upstream) -> None:
        self.up = upstream

    async def _params(self, request: Request, kind: type[SamplingFields]) -> tuple[Any, str]:
        settings = self.up.settings
        got, _ = await read_json(request, settings.limits)
        try:
            params = kind.model_validate(got)
        except ValidationError as e:
            message, param = validation_message(e)
            raise HttpError(error_response(400, message, param=param)) from e
        model = resolve_model(self.up.table, params.model, settings.retry_after_s)
        prompts = getattr(params, "prompts", None) or [getattr(params, "prompt", "")]
        refusal = admit(
            {"prompt": prompts, "max_tokens": params.max_tokens},
            settings.limits,
            context_len(self.up.table, model),
        )
        if refusal is not None:
            raise refused(refusal)
        return params, model

    async def _complete_one(
        self, params: SamplingFields, prompt: str, model: str, route: str
    ) -> GenerateResult:
        body = json.dumps(params.completion_body(prompt, model)).encode()
        # Keyed as the policy keys a completion (kv-aware: the engine's own tokens).
        key = self.up.table.route_request(model, "completions", {"prompt": prompt})
        up = await self.up.buffered(route, key, "/v1/completions", body)
        if up.status != 200:
            # vLLM's 4xx (e.g. a prompt longer than the context) keep status and message.
            raise HttpError(
                error_response(
                    up.status,
                    error_message(up.body),
                    type="invalid_request_error" if up.status < 500 else "upstream_error",
                    code=up.status,
                )
            )
        try:
            result = GenerateResult.from_completion(json.loads(up.body), model)
        except ValueError as e:
            raise HttpError(
                error_response(
                    502,
                    f"Replica {up.replica.replica_id} sent an unreadable answer: {e}.",
                    type="upstream_error",
                )
            ) from e
        self.up.metrics.count_usage(model, result.usage)
        return result

    async def generate(self, request: Request) -> Response:
        params, model = await self._params(request, GenerateRequest)
        result = await unless_client_leaves(
            self._complete_one(params, params.prompt, model, "generate"),
            request.receive,
            request.scope,
        )
        return json_response(result.model_dump())

    async def batch_generate(self, request: Request) -> Response:
        params, model = await self._params(request, BatchGenerateRequest)
        if not params.prompts:
            empty = error_response(400, "`prompts` is empty.", param="prompts", code="empty_batch")
            raise HttpError(empty)
        results = await unless_client_leaves(
            asyncio.gather(
                *(self._complete_one(params, p, model, "batch_generate") for p in params.prompts),
                return_exceptions=True,
            ),
            request.receive,
            request.scope,
        )
        for i, result in enumerate(results):
            if isinstance(result, HttpError):
                failed = result.response
                raise HttpError(
                    error_response(
                        failed.status_code,
                        f"prompts[{i}]: {error_message(bytes(failed.body))}",
                        type="invalid_request_error"
                        if failed.status_code < 500
                        else "upstream_error",
                        param=f"prompts[{i}]",
                        code=failed.status_code,
                        headers={
                            k: v for k, v in failed.headers.items() if k.lower() == "retry-after"
                        },
                    )
                )
            if isinstance(result, BaseException):
                raise result
        done = [r for r in results if isinstance(r, GenerateResult)]
        usage: dict[str, int] = {}
        for r in done:
            for k, v in r.usage.items():
                usage[k] = usage.get(k, 0) + v
        return json_response({"results": [r.model_dump() for r in done], "usage": usage})
