"""Autoscaling a model of a deployment: its bounds and targets (`[autoscaling]` in
raylm.toml, or `raylm autoscale`), the load each gateway reports to the controller, and
what the controller decided (shown by `raylm ps` and the gateway's /metrics).

The controller's rule is serve/autoscaler.py's. These models cross the controller's actor
boundary, the gateway's admin routes and the relay between gateway workers unchanged.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Autoscaling(BaseModel):
    """How many replicas of a model the controller keeps, from the load on them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min_replicas: int = Field(
        default=1, ge=1, le=1024, description="Fewest replicas, however idle the model."
    )
    max_replicas: int = Field(
        ge=1,
        le=1024,
        description="Most replicas, however busy; `raylm serve` checks at start that this "
        "many fit beside the other models.",
    )
    target_in_flight_per_replica: float = Field(
        ge=0.1,
        le=100_000,
        description="Requests in flight or waiting at the gateway per replica the "
        "controller aims for: it wants ceil(load / target) replicas.",
    )
    upscale_delay_s: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="How long the load must want more replicas before one is added (a short "
        "burst adds none).",
    )
    downscale_delay_s: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="How long the load must want fewer replicas before one is drained and removed.",
    )
    look_back_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="The load is the mean of the gateways' reports over this window.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas "
                f"({self.max_replicas}): raise max_replicas or lower min_replicas"
            )
        return self

    def bounded(self, replicas: int) -> int:
        """`replicas` moved inside [min_replicas, max_replicas]."""
        return max(self.min_replicas, min(self.max_replicas, replicas))

    def starting(self, replicas: int | None) -> int:
        """Replicas it starts with: `replicas` when given, else min_replicas."""
        return self.min_replicas if replicas is None else replicas

    def merged(self, **given: float | None) -> Autoscaling:
        """These settings with the values `given` (None: keep this one)."""
        return Autoscaling.model_validate(
            self.model_dump() | {k: v for k, v in given.items() if v is not None}
        )

    def describe(self) -> str:
        """In words, as `raylm ps` prints it."""
        return (
            f"{self.min_replicas}-{self.max_replicas} replicas at "
            f"{self.target_in_flight_per_replica:g} in flight each"
        )


class LoadReport(BaseModel):
    """What one gateway process tells the controller of its load (each refresh)."""

    model_config = ConfigDict(extra="forbid")

    gateway: str = Field(
        description="The reporting gateway (host:pid:serial), the same in each of its reports."
    )
    load: dict[str, int] = Field(
        description="Per served model name, its requests in flight to replicas plus those "
        "waiting in the gateway's queue."
    )
    draining: dict[str, int] = Field(
        default_factory=dict,
        description="Per replica its table shows stopping (being drained), the requests this "
        "process still has open to it (a stream until its last byte). A drain ends when every "
        "gateway reports the replica here with 0: none will route to it again.",
    )


class AutoscaleStatus(BaseModel):
    """One autoscaled model's load and the controller's decisions (`raylm ps`, /metrics)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The served model name.")
    settings: Autoscaling = Field(description="Its bounds and targets.")
    desired: int = Field(ge=0, description="Replicas the controller keeps now.")
    load: float = Field(ge=0, description="The mean load over the look-back window.")
    wanted: int = Field(ge=0, description="Replicas that load wants, inside the bounds.")
    ups: int = Field(default=0, ge=0, description="Scale-ups decided so far.")
    downs: int = Field(default=0, ge=0, description="Scale-downs decided so far.")
    last: str = Field(default="", description="The last decision (or why none), in words.")
    last_at: float = Field(
        default=0.0, ge=0, description="When `last` was decided (Unix time; 0: never)."
    )
