"""A typed client of a running deployment's admin routes (raylm.gateway.admin_routes):
what `raylm ps` and `raylm scale` use, from any machine that reaches the gateway."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from raylm.autoscaling import Autoscaling
from raylm.errors import OperationError
from raylm.operations import (
    AddRequest,
    AutoscaleRequest,
    DeploymentView,
    ModelView,
    RemoveRequest,
    ScaleRequest,
    ScaleResult,
    UpdateRequest,
    UpdateResult,
)
from raylm.replica import ReplicaState

T = TypeVar("T", bound=BaseModel)

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
_REFUSALS = (400, 404, 409)
"""Statuses whose body is the change's own result, saying why it was refused."""
ADMIN_KEY_ENV = "RAYLM_ADMIN_KEY"


class AdminClient:
    """The admin routes of the gateway at `endpoint`, with `admin_key`."""

    def __init__(self, endpoint: str, admin_key: str | None, timeout_s: float = 180.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self._http = httpx.Client(base_url=self.endpoint, headers=headers, timeout=timeout_s)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def deployment(self) -> DeploymentView:
        """The models and replicas of the deployment."""
        return _read(DeploymentView, self._ask("GET", "/admin/deployment"), self.endpoint)

    def scale(self, model: str, replicas: int) -> ScaleResult:
        """Ask for `replicas` replicas of `model`; OperationError when refused."""
        body = ScaleRequest(model=model, replicas=replicas).model_dump()
        answer = self._ask("POST", "/admin/scale", body, ok=_REFUSALS)
        result = _read(ScaleResult, answer, self.endpoint)
        if result.error:
            raise OperationError(
                f"Cannot scale {model} to {replicas}",
                why=result.error,
                command="raylm ps",
            )
        return result

    def autoscale(self, model: str, settings: Autoscaling | None) -> ScaleResult:
        """Autoscale `model` with `settings` (None: stop); OperationError when refused."""
        body = AutoscaleRequest(model=model, autoscaling=settings).model_dump()
        answer = self._ask("POST", "/admin/autoscale", body, ok=_REFUSALS)
        result = _read(ScaleResult, answer, self.endpoint)
        if result.error:
            raise OperationError(
                f"Cannot change the autoscaling of {model}", why=result.error, command="raylm ps"
            )
        return result

    def update(self, request: UpdateRequest) -> UpdateResult:
        """Start a rolling update; OperationError when refused."""
        answer = self._ask("POST", "/admin/update", request.model_dump(), ok=_REFUSALS)
        result = _read(UpdateResult, answer, self.endpoint)
        if result.error:
            raise OperationError(
                f"Cannot update {request.model}", why=result.error, command="raylm ps"
            )
        return result

    def wait_rolled(
        self, model: str, timeout_s: float, progress: Callable[[str], None]
    ) -> ModelView:
        """Wait for `model`'s rollout to end, calling `progress` with each new state;
        OperationError when it stopped or took too long."""
        deadline = time.monotonic() + timeout_s
        seen = ""
        while True:
            view = self._model(model)
            if view.rollout != seen:
                seen = view.rollout
                progress(seen)
            if seen.startswith("updated"):
                return view
            if seen.startswith("failed"):
                raise OperationError(
                    f"The update of {model} stopped",
                    why=seen.removeprefix("failed: "),
                    fix="Fix the new version (a failing replica's log says why); the old "
                    "version goes on serving",
                    command="raylm ps",
                )
            if time.monotonic() > deadline:
                raise OperationError(
                    f"The update of {model} did not end in {timeout_s:g} s",
                    why=seen,
                    fix="It goes on in the controller: watch it",
                    command="raylm ps",
                )
            time.sleep(1.0)

    def _model(self, model: str) -> ModelView:
        view = next((m for m in self.deployment().models if m.name == model), None)
        if view is None:
            raise OperationError(f"The model {model} left the deployment")
        return view

    def add(self, spec: dict[str, object]) -> ScaleResult:
        """Plan and start one more model (its [[models]] fields); OperationError when
        refused (it does not fit, its name is taken, a field is wrong)."""
        answer = self._ask("POST", "/admin/add", AddRequest(spec=spec).model_dump(), ok=_REFUSALS)
        result = _read(ScaleResult, answer, self.endpoint)
        if result.error:
            raise OperationError(
                f"Cannot add {result.model or 'the model'}", why=result.error, command="raylm ps"
            )
        return result

    def remove(self, model: str) -> ScaleResult:
        """Drain and stop `model`; OperationError when refused."""
        body = RemoveRequest(model=model).model_dump()
        answer = self._ask("POST", "/admin/remove", body, ok=_REFUSALS)
        result = _read(ScaleResult, answer, self.endpoint)
        if result.error:
            raise OperationError(f"Cannot remove {model}", why=result.error, command="raylm ps")
        return result

    def wait_gone(self, model: str, timeout_s: float) -> None:
        """Wait until `model` and its replicas left the deployment."""
        deadline = time.monotonic() + timeout_s
        while any(m.name == model for m in self.deployment().models):
            if time.monotonic() > deadline:
                raise OperationError(f"{model} was not gone in {timeout_s:g} s", command="raylm ps")
            time.sleep(1.0)

    def wait_scaled(self, model: str, replicas: int, timeout_s: float) -> ModelView:
        """Wait until `model` has exactly `replicas` replicas, all ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self._model(model)
            states = [r.state for r in view.replicas]
            if len(states) == replicas and all(s is ReplicaState.READY for s in states):
                return view
            if time.monotonic() > deadline:
                seen = ", ".join(f"{r.replica_id} {r.state.value}" for r in view.replicas)
                raise OperationError(
                    f"{model} did not reach {replicas} ready replica(s) in {timeout_s:g} s",
                    why=f"now: {seen}",
                    fix="It may still get there: watch it, and read a failing replica's log",
                    command="raylm ps",
                )
            time.sleep(1.0)

    def _ask(self, method: str, path: str, body: object = None, ok: tuple[int, ...] = ()) -> object:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise OperationError(
                f"No raylm gateway answers at {self.endpoint}",
                why=f"{type(e).__name__}: {e}",
                fix="Give the endpoint `raylm serve` printed, without /v1",
                command="raylm ps --endpoint http://HOST:PORT",
            ) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        # A change's own refusals (unknown model, no room) come as its result; the
        # gateway's (bad body, wrong key) in the OpenAI error shape.
        shaped = isinstance(data, dict) and isinstance(data.get("error"), dict)
        if r.status_code == 200 or (r.status_code in ok and not shaped):
            return data
        message = data["error"].get("message", "") if shaped else r.text[:300]
        fix = {
            401: f"Give the admin key raylm serve was started with (--admin-key, ${ADMIN_KEY_ENV})",
            403: "Restart raylm serve with an admin key (--admin-key, admin_key in raylm.toml)",
        }.get(r.status_code, "")
        raise OperationError(
            f"The gateway at {self.endpoint} refused {method} {path} ({r.status_code})",
            why=message,
            fix=fix,
        )


def _read(kind: type[T], answer: object, endpoint: str) -> T:
    try:
        return kind.model_validate(answer)
    except ValidationError as e:
        raise OperationError(
            f"The gateway at {endpoint} answered something raylm cannot read",
            why=f"not a {kind.__name__}: {e.error_count()} problem(s)",
            fix="Run the same raylm version as the gateway",
        ) from None
