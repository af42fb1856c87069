"""What a rank's supervisor tells the controller, typed across the actor boundary (Ray
pickles these models; neither side reads dict keys)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from raylm.replica import ReplicaState


class RankNode(BaseModel):
    """Where a rank's supervisor runs, so the controller can wire the ranks together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_ip: str = Field(description="The node's address in the cluster.")
    node_id: str = Field(description="Ray node id.")
    host_id: str = Field(
        description="Identifies the physical host (ranks on one host share its cores)."
    )
    pid: int = Field(description="The supervisor actor's process id.")


class RankStarted(BaseModel):
    """A rank's vLLM process, just started."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pid: int = Field(description="Process id of the vLLM launcher.")
    log_path: str = Field(description="The rank's vLLM log on its node.")


class RankStatus(BaseModel):
    """One look at a rank: its state, and for a dead one, why and its log's end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: ReplicaState = Field(description="The rank's life-cycle state.")
    detail: str = Field(description="Why it is in this state, for humans.")
    node_ip: str = Field(description="The node the rank runs on.")
    pid: int | None = Field(description="vLLM launcher's pid (None before launch).")
    exit_code: int | None = Field(description="vLLM's exit code once it ended.")
    log_path: str = Field(description="The rank's vLLM log ('' before launch).")
    log_tail: str = Field(description="The end of the log of a dead rank ('' otherwise).")
