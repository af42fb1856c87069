"""What happened to the replicas, as this gateway saw it: the dashboard's events feed.

Events come from two places. Each table refresh is compared with the one before: a replica
started, became ready, fell out of ready (died, unhealthy, lost its node), restarted, was
stopped (drained or torn down) or removed. And the gateway's own failovers: a request
that a replica failed before answering, sent to another. Worker 0 keeps the feed (its last
`capacity` events): the other gateway workers forward their failovers to it and read the
feed from it (raylm.gateway.workers' relay), so every worker serves the same one. Its
`boot` changes when the gateway restarts: a reader starts over from 0 then.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from raylm.replica import ReplicaInfo, ReplicaState


class Event(BaseModel):
    """One thing that happened to a replica."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1, description="Its place in this gateway's feed (ask for those after).")
    time: float = Field(description="When the gateway saw it (Unix time).")
    kind: str = Field(
        description="started, ready, not-ready, restarted, stopping, removed or failover."
    )
    replica: str = Field(description="The replica's id.")
    message: str = Field(description="What happened, in words (the controller's detail).")


class EventFeed(BaseModel):
    """What `/dashboard/events?since=N` answers."""

    model_config = ConfigDict(extra="forbid")

    boot: str = Field(description="This feed's id; a new one when the gateway restarted.")
    events: list[Event] = Field(description="The events after the reader's cursor, oldest first.")


class EventLog:
    """The last events, numbered."""

    def __init__(self, capacity: int = 500) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = itertools.count(1)
        self._last: dict[str, ReplicaInfo] | None = None
        self.boot = secrets.token_hex(6)
        self.forward: Callable[[str, str, str], None] | None = None
        """Set on gateway workers other than 0: events go to worker 0's feed instead."""

    def since(self, seq: int) -> list[Event]:
        return [e for e in self._events if e.seq > seq]

    def feed(self, since: int) -> EventFeed:
        return EventFeed(boot=self.boot, events=self.since(since))

    def add(self, kind: str, replica: str, message: str) -> None:
        if self.forward is not None:
            self.forward(kind, replica, message)
            return
        self._events.append(
            Event(
                seq=next(self._seq), time=time.time(), kind=kind, replica=replica, message=message
            )
        )

    def table(self, replicas: list[ReplicaInfo]) -> None:
        """Compare a new table with the last one; record what changed."""
        if self.forward is not None:
            return  # worker 0 sees the same table and keeps the feed
        now = {r.replica_id: r for r in replicas}
        before, self._last = self._last, now
        if before is None:
            return  # the first table: its replicas' history is not this gateway's to tell
        for rid, r in now.items():
            old = before.get(rid)
            where = ",".join(r.nodes) or r.node or "?"
            if old is None:
                self.add("started", rid, f"{r.model} on {where}: {r.state.value}")
            elif r.restarts > old.restarts:
                self.add("restarted", rid, f"restart {r.restarts} on {where}: {r.detail}")
            elif r.state is not old.state:
                self._state_change(old, r, where)
        for rid, old in before.items():
            if rid not in now:
                self.add("removed", rid, f"{old.model} is no longer served by it")

    def _state_change(self, old: ReplicaInfo, r: ReplicaInfo, where: str) -> None:
        rid, detail = r.replica_id, r.detail or r.state.value
        if r.state is ReplicaState.READY:
            self.add("ready", rid, f"ready on {where}")
        elif r.state is ReplicaState.STOPPING:
            self.add("stopping", rid, detail)  # drained (a scale-down), or torn down
        elif old.state is ReplicaState.READY:
            self.add("not-ready", rid, f"{r.state.value} on {where}: {detail}")
        elif r.state is ReplicaState.DEAD:
            self.add("not-ready", rid, f"dead on {where}: {detail}")
