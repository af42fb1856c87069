"""The admin routes: what `raylm ps` and `raylm scale` ask of a running deployment, over
HTTP, so that any machine that reaches the gateway can operate it.

They need the admin key (`admin_key`, separate from the clients' API keys, which never
open them); without one configured they are off (403 saying how to turn them on). The
work is the operator's: the controller, reached through the replica source
(serve/source.py), or through worker 0 from the other gateway workers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from raylm.gateway.body import read_body
from raylm.gateway.limits import Refusal
from raylm.gateway.responses import (
    HttpError,
    error_response,
    json_response,
    refused,
    unavailable,
)
from raylm.operations import (
    AddRequest,
    AutoscaleRequest,
    DeploymentView,
    RemoveRequest,
    ScaleRequest,
    ScaleResult,
    UpdateRequest,
    UpdateResult,
)

T = TypeVar("T", bound=BaseModel)
logger = logging.getLogger(__name__)


@runtime_checkable
class Operator(Protocol):
    """Anything that can show and change the deployment (the controller)."""

    async def deployment(self) -> DeploymentView:
        """The models and replicas as the controller holds them."""
        ...

    async def scale(self, request: ScaleRequest) -> ScaleResult:
        """Change a model's replica count."""
        ...

    async def update(self, request: UpdateRequest) -> UpdateResult:
        """Start a rolling update of a model."""
        ...

    async def autoscale(self, request: AutoscaleRequest) -> ScaleResult:
        """Change (or stop) a model's autoscaling."""
        ...

    async def add(self, request: AddRequest) -> ScaleResult:
        """Plan and start one more model."""
        ...

    async def remove(self, request: RemoveRequest) -> ScaleResult:
        """Drain and stop a model."""
        ...


class AdminRoutes:
    """`GET /admin/deployment`, `POST /admin/scale`, `/admin/update`, `/admin/autoscale`,
    `/admin/add` and `/admin/remove`."""

    def __init__(self, operator: object, admin_key: bytes | None) -> None:
        self.operator = operator if isinstance(operator, Operator) else None
        self._key = hashlib.sha256(admin_key).digest() if admin_key is not None else None

    @property
    def keyed(self) -> bool:
        """Whether an admin key is set."""
        return self._key is not None

    def refusal(self, authorization: bytes | None) -> Response | None:
        """Why an admin request may not go on (403 off, 401 wrong key), or None."""
        if self._key is None:
            why = "no admin key is set: serve with --admin-key (or admin_key in raylm.toml)"
            return error_response(403, f"Admin routes are off: {why}.", code="admin_off")
        scheme, _, token = (authorization or b"").partition(b" ")
        # Digests compared: the time says nothing of the key, its length included.
        given = hashlib.sha256(token.strip()).digest()
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given, self._key):
            return error_response(
                401,
                "Missing or wrong admin key: send `Authorization: Bearer <admin key>`.",
                code="invalid_admin_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if self.operator is None:
            why = "this gateway does not run a deployment (no controller to ask)"
            return error_response(403, f"Admin routes are off: {why}.", code="admin_off")
        return None

    async def deployment(self, request: Request) -> Response:
        assert self.operator is not None
        try:
            view = await self.operator.deployment()
        except Exception as e:
            raise _unreachable(e) from e
        return json_response(view.model_dump(mode="json"))

    async def scale(self, request: Request) -> Response:
        asked = await _read(request, ScaleRequest)
        assert self.operator is not None
        return await _answer(self.operator.scale(asked))

    async def update(self, request: Request) -> Response:
        asked = await _read(request, UpdateRequest)
        assert self.operator is not None
        return await _answer(self.operator.update(asked))

    async def autoscale(self, request: Request) -> Response:
        asked = await _read(request, AutoscaleRequest)
        assert self.operator is not None
        return await _answer(self.operator.autoscale(asked))

    async def add(self, request: Request) -> Response:
        asked = await _read(request, AddRequest)
        assert self.operator is not None
        return await _answer(self.operator.add(asked))

    async def remove(self, request: Request) -> Response:
        asked = await _read(request, RemoveRequest)
        assert self.operator is not None
        return await _answer(self.operator.remove(asked))


async def _answer(change: Awaitable[ScaleResult | UpdateResult]) -> Response:
    """A change's result, with the status it carries (its refusals included)."""
    try:
        result = await change
    except Exception as e:  # the controller is another process: say so, never a 500
        logger.warning("admin change failed: %s: %s", type(e).__name__, e)
        raise _unreachable(e) from e
    return json_response(result.model_dump(mode="json"), status=result.status)


async def _read(request: Request, kind: type[T]) -> T:
    body = await read_body(request.receive, 64 * 1024)
    if isinstance(body, Refusal):
        raise refused(body)
    try:
        return kind.model_validate_json(body)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
        )
        raise HttpError(error_response(400, f"Bad {kind.__name__}: {problems}.")) from None


def _unreachable(e: Exception) -> HttpError:
    message = f"The deployment's controller did not answer ({type(e).__name__}: {e})."
    return HttpError(unavailable(message, 2, "controller_unavailable"))
