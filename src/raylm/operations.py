"""What operators ask of a running deployment, and what they get back: the models and
replicas as the controller holds them (`raylm ps`), and a change of a model's replica
count (`raylm scale`). These models cross the controller's actor boundary and the
gateway's admin routes (raylm.gateway.admin_routes) unchanged."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from raylm.replica import ReplicaInfo, ReplicaState


class ModelView(BaseModel):
    """One model of the deployment: what it should be and what runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The served model name clients put in `model`.")
    model_path: str = Field(description="The model directory its replicas load (its version).")
    desired: int = Field(ge=0, description="Replicas the controller keeps serving.")
    tensor_parallel_size: int = Field(ge=1, description="TP per replica.")
    pipeline_parallel_size: int = Field(ge=1, description="PP per replica.")
    replicas: list[ReplicaInfo] = Field(description="Its replicas now, draining ones included.")

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
