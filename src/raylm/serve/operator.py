"""The admin routes' operator in `raylm serve`: each change is the controller's, and a
model added is first planned here, where the model store and the planner are, on what the
deployment's replicas leave free (serve/together.py does the same at start)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from raylm.config import MODEL_FIELDS, ServeSpec, build_spec
from raylm.errors import ConfigError, PlanError, RaylmError
from raylm.models.store import ModelStore
from raylm.operations import AddRequest, RemoveRequest, ScaleResult
from raylm.replica import ReplicaInfo
from raylm.serve.deployment import DeploymentConfig
from raylm.serve.placement import Placement
from raylm.serve.planning import check_model_layout, plan_deployment
from raylm.serve.source import ControllerReplicaSource

logger = logging.getLogger(__name__)


class _LogReporter:
    """Planning's progress, to the log (the change's answer says the outcome)."""

    def phase(self, text: str) -> None:
        logger.info("adding a model: %s", text)

    def replicas(self, infos: list[ReplicaInfo]) -> None:
        pass

    def ready(self, endpoint: str, models: list[tuple[str, Placement]], keyed: bool) -> None:
        pass

    def stopping(self, text: str) -> None:
        pass


class DeploymentOperator(ControllerReplicaSource):
    """The controller's replica source, which also adds and removes models."""

    def __init__(
        self, controller: Any, spec: ServeSpec, first: DeploymentConfig, local: bool
    ) -> None:
        super().__init__(controller)
        self._spec = spec  # the deployment's own fields, for a model added later
        self._first = first  # its name and replica key
        self._local = local
        self._adding = asyncio.Lock()  # two adds at once would plan on the same free room

    async def add(self, request: AddRequest) -> ScaleResult:
        name = str(request.spec.get("served_model_name") or request.spec.get("model") or "")
        outside = sorted(set(request.spec) - MODEL_FIELDS)
        if outside:
            error = (
                f"A model added to a running deployment sets only its own fields; not "
                f"{', '.join(outside)} (the deployment's)."
            )
            return ScaleResult(model=name, before=0, after=0, error=error, status=400)
        async with self._adding:
            return await self._add(request, name)

    async def _add(self, request: AddRequest, name: str) -> ScaleResult:
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, self._plan, request.spec)
        except PlanError as e:
            error = f"It does not fit beside the deployment's models: {e.message()}"
            return ScaleResult(model=name, before=0, after=0, error=error, status=409)
        except RaylmError as e:
            return ScaleResult(model=name, before=0, after=0, error=e.message(), status=409)
        result: ScaleResult = await asyncio.wait_for(
            self._controller.add_model.remote(config), 30.0
        )
        return result

    def _plan(self, fields: dict[str, Any]) -> DeploymentConfig:
        base = self._spec.model_dump(exclude={*MODEL_FIELDS, "api_key", "admin_key", "keys"})
        spec = build_spec({**base, **fields}, {}, "the model added")
        entry = ModelStore().resolve(spec.model)
        import ray  # function-local: Ray reads its auth settings at import

        served = spec.served_model_name or entry.name
        view = ray.get(self._controller.deployment.remote(), timeout=30)
        if served in [m.name for m in view.models]:
            raise ConfigError(
                f"`{served}` is already served (or still being removed)",
                fix="Give the new model another served_model_name",
            )
        tp, pp = spec.tensor_parallel_size or 1, spec.pipeline_parallel_size or 1
        check_model_layout(Path(entry.path), tp, pp)
        held = ray.get(self._controller.held.remote(), timeout=30)
        config, _ = plan_deployment(spec, entry, self._local, _LogReporter(), held)
        return config.model_copy(
            update={"name": self._first.name, "replica_api_key": self._first.replica_api_key}
        )

    async def remove(self, request: RemoveRequest) -> ScaleResult:
        result: ScaleResult = await asyncio.wait_for(
            self._controller.remove_model.remote(request.model), 30.0
        )
        return result
