"""Where the gateway learns which replicas exist and which are ready."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from raylm.autoscaling import AutoscaleStatus, LoadReport
from raylm.replica import ReplicaInfo

if TYPE_CHECKING:  # its module attaches to Ray: a gateway worker does not load it to start
    from raylm.cluster.inventory import NodeInventory
    from raylm.gateway.events import EventFeed


@runtime_checkable
class ReplicaSource(Protocol):
    """Anything that can list the replicas right now (the controller, or a fixed list)."""

    async def snapshot(self) -> list[ReplicaInfo]:
        """The current replicas, every state included."""
        ...


@runtime_checkable
class LoadSink(Protocol):
    """Anything that takes the gateway's load for autoscaling (the controller)."""

    async def report_load(self, report: LoadReport) -> list[AutoscaleStatus]:
        """This gateway's load per model; answers each autoscaled model's status."""
        ...


@runtime_checkable
class NodeSource(Protocol):
    """Anything that can describe the cluster's nodes (the controller): the dashboard's."""

    async def nodes(self) -> list[NodeInventory]:
        """Every node, as `raylm status` shows it."""
        ...


@runtime_checkable
class EventSource(Protocol):
    """Where a gateway worker other than 0 reads the one events feed (worker 0's)."""

    async def events(self, since: int) -> EventFeed:
        """The feed after `since`."""
        ...


class StaticReplicaSource:
    """A fixed (but replaceable) list of replicas, for tests and benchmarks."""

    def __init__(self, replicas: list[ReplicaInfo]) -> None:
        self._replicas = list(replicas)

    def set(self, replicas: list[ReplicaInfo]) -> None:
        """Replace the list, as a controller would after a state change."""
        self._replicas = list(replicas)

    async def snapshot(self) -> list[ReplicaInfo]:
        return list(self._replicas)
