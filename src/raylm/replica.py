"""Replica states and facts: what the controller reports and the gateway routes on (shared
by `serve` and `gateway`, so neither imports the other for them)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ReplicaState(StrEnum):
    """Life cycle of one replica, as the controller sees it."""

    PENDING = "pending"
    """Waiting for devices (Ray has not placed it yet)."""
    STARTING = "starting"
    """vLLM is loading; not routable."""
    READY = "ready"
    """The last one-token probe succeeded within its deadline; routable."""
    UNHEALTHY = "unhealthy"
    """Probes are failing but the strike count is not exhausted; not routable."""
    DEAD = "dead"
    """A process exited or the probe gave up; it will be torn down and restarted."""
    STOPPING = "stopping"
    """Draining or being stopped; not routable for new requests."""


class ReplicaInfo(BaseModel):
    """One replica as published by the controller to the gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replica_id: str = Field(description="Stable id, e.g. 'smollm2-135m-instruct-0'.")
    model: str = Field(description="The served model name clients put in `model`.")
    url: str = Field(description="Base URL of rank 0's OpenAI server, e.g. http://10.0.0.2:8001.")
    node: str = Field(description="IP address of the node hosting rank 0.")
    nodes: list[str] = Field(default_factory=list, description="IPs of every node of the replica.")
    state: ReplicaState = Field(description="Current life-cycle state.")
    max_model_len: int | None = Field(
        default=None, description="Context length the engine was started with, when known."
    )
    restarts: int = Field(default=0, description="How many times this replica was restarted.")
    detail: str = Field(default="", description="Why the replica is in this state, for humans.")
    log_path: str = Field(default="", description="vLLM log of rank 0 on its node.")
    model_path: str = Field(
        default="",
        description="The model directory as `raylm serve`'s node sees it (where the gateway "
        "loads the tokenizer of a model added live); '' when unknown.",
    )
    generation: int = Field(
        default=0, description="Bumped on each restart, so a gateway can tell old from new."
    )

    @property
    def routable(self) -> bool:
        return self.state is ReplicaState.READY
