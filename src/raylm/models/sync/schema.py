"""The pydantic models that cross Ray between the driver and the node agents.

Requests and results of the agent's calls (`ReceiveRequest`, `SyncReport`,
`NodeProgress`, `AgentInfo`): each pickles through Ray, and a sync's settings travel in
its `ReceiveRequest` rather than living on the actor.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from raylm.models.manifest import Manifest
from raylm.models.sync.transport import TransferSettings


class NodeProgress(BaseModel):
    """How far one node's sync has come, polled while it runs."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="IP address of the receiving node.")
    bytes_done: int = Field(default=0, description="Bytes received and written so far.")
    bytes_total: int = Field(default=0, description="Bytes this node has to receive.")
    files_done: int = Field(default=0, description="Files completed (verified and renamed).")
    files_total: int = Field(default=0, description="Files this node has to receive.")
    phase: str = Field(default="starting", description="starting, checking, copying or done.")


class SyncReport(BaseModel):
    """What a sync did on one node."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="IP address of the receiving node.")
    path: str = Field(default="", description="The model directory on that node.")
    ok: bool = Field(description="True when the node now holds a verified copy.")
    files_sent: list[str] = Field(default_factory=list, description="Files copied to the node.")
    files_kept: int = Field(default=0, description="Files already present and correct.")
    bytes_sent: int = Field(default=0, description="Bytes moved over the network.")
    bytes_resumed: int = Field(
        default=0, description="Bytes of `.part` files kept from an interrupted sync."
    )
    seconds: float = Field(default=0.0, description="Wall time on the node.")
    error: str = Field(default="", description="Why the node could not be synced, if so.")


class AgentInfo(BaseModel):
    """Where an agent runs and how much room its store has."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="IP address of the agent's node.")
    root: str = Field(description="The node's store root (its RAYLM_HOME models directory).")
    free_bytes: int = Field(description="Free bytes on the store's filesystem.")
    pid: int = Field(description="Process id of the agent.")


class ReceiveRequest(BaseModel):
    """One sync of one model to the agent's node, with that sync's own settings."""

    model_config = ConfigDict(extra="forbid")

    ref: Manifest = Field(description="The manifest the received copy must match.")
    settings: TransferSettings = Field(
        default_factory=TransferSettings, description="How this sync moves bytes."
    )
