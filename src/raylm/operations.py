"""What operators ask of a running deployment, and what they get back: the models and
replicas as the controller holds them (`raylm ps`), and a change of a model's replica
count (`raylm scale`). These models cross the controller's actor boundary and the
gateway's admin routes (raylm.gateway.admin_routes) unchanged."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raylm.autoscaling import AutoscaleStatus, Autoscaling
from raylm.replica import ReplicaInfo, ReplicaState


class ModelView(BaseModel):
    """One model of the deployment: what it should be and what runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The served model name clients put in `model`.")
    model_path: str = Field(description="The model directory its replicas load (its version).")
    desired: int = Field(ge=0, description="Replicas the controller keeps serving.")
    version: int = Field(
        ge=1, description="The version new replicas start as (1, then +1 per `raylm update`)."
    )
    rollout: str = Field(default="", description="The last rolling update's state, if any.")
    tensor_parallel_size: int = Field(ge=1, description="TP per replica.")
    pipeline_parallel_size: int = Field(ge=1, description="PP per replica.")
    replicas: list[ReplicaInfo] = Field(description="Its replicas now, draining ones included.")
    versions: dict[str, int] = Field(
        default_factory=dict, description="Per replica id, the version it runs."
    )
    autoscale: AutoscaleStatus | None = Field(
        default=None, description="Its autoscaling and the last decision; None: not autoscaled."
    )

    @property
    def ready(self) -> int:
        return sum(r.state is ReplicaState.READY for r in self.replicas)


class DeploymentView(BaseModel):
    """The whole deployment, as `raylm ps` shows it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The deployment's name (`raylm serve --name`).")
    models: list[ModelView] = Field(description="Its models, in the spec file's order.")


class ScaleRequest(BaseModel):
    """`raylm scale MODEL N`: the body of `POST /admin/scale`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model name to scale.")
    replicas: int = Field(ge=1, le=1024, description="Replicas it should have.")


class AddRequest(BaseModel):
    """`raylm add -f model.toml`: the body of `POST /admin/add`."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] = Field(
        description="The model's fields, as in a [[models]] entry of raylm.toml (model, "
        "served_model_name, replicas, tensor_parallel_size, engine_args, ...)."
    )


class RemoveRequest(BaseModel):
    """`raylm remove MODEL`: the body of `POST /admin/remove`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model name to remove.")


class AutoscaleRequest(BaseModel):
    """`raylm autoscale MODEL`: the body of `POST /admin/autoscale`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model name to autoscale.")
    autoscaling: Autoscaling | None = Field(
        description="Its bounds and targets from now on; None: stop autoscaling it (its "
        "replica count stays as it is)."
    )


class UpdateRequest(BaseModel):
    """`raylm update MODEL`: the body of `POST /admin/update`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model name to update.")
    model_path: str | None = Field(
        default=None,
        description="The new version's model directory, present on every node; None: "
        "the same weights.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments set over the current ones (dashed names).",
    )
    max_surge: int = Field(
        default=1, ge=0, le=64, description="New replicas started beyond the desired count."
    )
    max_unavailable: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="Old replicas drained before their replacement is ready; None: 0 when "
        "the cluster has room for a new replica beside the old ones, else 1.",
    )

    @field_validator("engine_args")
    @classmethod
    def _not_owned(cls, args: dict[str, Any]) -> dict[str, Any]:
        from raylm.engine_args import engine_arg_name, owned_engine_arg

        clash = [f"{k} (use {fix})" for k in args if (fix := owned_engine_arg(k))]
        if clash:
            raise ValueError("engine_args may not set what raylm owns: " + "; ".join(clash))
        return {engine_arg_name(k): v for k, v in args.items()}


class UpdateResult(BaseModel):
    """A rollout started (its version), or why not (`error`, with the HTTP status)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model asked for.")
    version: int = Field(ge=0, description="The version being rolled out.")
    error: str | None = Field(default=None, description="Why nothing started, if so.")
    status: int = Field(default=200, description="200, or the HTTP status of `error`.")


class ScaleResult(BaseModel):
    """What a scale did, or why it did nothing (`error`, with the HTTP status to answer)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model asked for.")
    before: int = Field(ge=0, description="Replicas it was to have before.")
    after: int = Field(ge=0, description="Replicas it is to have now.")
    added: list[str] = Field(default_factory=list, description="Replicas being started.")
    draining: list[str] = Field(
        default_factory=list, description="Replicas being drained, then stopped."
    )
    error: str | None = Field(default=None, description="Why nothing changed, if so.")
    status: int = Field(default=200, description="200, or the HTTP status of `error`.")


def pick_to_retire(replicas: list[tuple[str, ReplicaState, int]], count: int) -> list[str]:
    """The `count` replicas (id, state, index) a scale-down removes: those not serving
    first (nothing to drain), then the newest (highest index)."""
    ranked = sorted(replicas, key=lambda r: (r[1] is ReplicaState.READY, -r[2]))
    return [rid for rid, _, _ in ranked[:count]]
