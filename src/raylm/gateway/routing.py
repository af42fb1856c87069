"""The replica table the gateway routes on: the latest snapshot, in-flight counts, ejected
replicas, and the routing policy that picks among the ready ones (raylm.gateway.policy)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from raylm.gateway.policy import Candidate, Decision, LeastOutstanding, RouteRequest, RoutingPolicy
from raylm.replica import ReplicaInfo, ReplicaState


@dataclass(frozen=True)
class ModelStatus:
    """How many replicas of one model exist and how many can take requests."""

    model: str
    ready: int
    total: int


class ReplicaTable:
    """The latest snapshot of replicas plus what only the gateway knows: in-flight
    counts and replicas it took out of rotation after a failed connection."""

    def __init__(self, eject_s: float, policy: RoutingPolicy | None = None) -> None:
        self._eject_s = eject_s
        self.policy: RoutingPolicy = policy or LeastOutstanding()
        self._replicas: dict[str, ReplicaInfo] = {}
        self._models: list[str] = []
        self._per_model: Counter[str] = Counter()  # replicas of each model, any state
        self._ready_per_model: Counter[str] = Counter()
        self._in_flight: dict[str, int] = {}
        self._prefill: dict[str, float] = {}  # predicted prompt tokens not yet prefilled
        # replica_id -> (monotonic deadline, generation it applies to)
        self._ejected: dict[str, tuple[float, int]] = {}

    def update(self, replicas: list[ReplicaInfo]) -> None:
        """Install a new snapshot; in-flight counts of surviving replicas are kept. A replica
        that is gone or restarted (a new generation) has lost its cache: the policy forgets
        what it knew of it."""
        new = {r.replica_id: r for r in replicas}
        for rid, old in self._replicas.items():
            now = new.get(rid)
            if now is None or now.generation != old.generation:
                self.policy.forget(rid)
        self._replicas = new
        self._models = sorted({r.model for r in replicas})
        self._per_model = Counter(r.model for r in replicas)
        self._ready_per_model = Counter(r.model for r in replicas if r.state is ReplicaState.READY)
        for rid, (_, generation) in list(self._ejected.items()):
            current = self._replicas.get(rid)
            # A restarted replica (new generation) deserves a fresh chance at once.
            if current is None or current.generation != generation:
                del self._ejected[rid]

    @property
    def replicas(self) -> list[ReplicaInfo]:
        return list(self._replicas.values())

    def get(self, replica_id: str) -> ReplicaInfo | None:
        return self._replicas.get(replica_id)

    def models(self) -> list[str]:
        """Every model with at least one replica, in any state (sorted)."""
        return self._models

    def ready_count(self, model: str) -> int:
        """Replicas of `model` the controller reports ready (as of the last snapshot)."""
        return self._ready_per_model[model]

    def status(self) -> list[ModelStatus]:
        out = []
        for model in self.models():
            reps = [r for r in self._replicas.values() if r.model == model]
            ready = sum(1 for r in reps if self.is_routable(r))
            out.append(ModelStatus(model=model, ready=ready, total=len(reps)))
        return out

    def unready(self, model: str) -> str:
        """What errors say when no replica of `model` can take a request:
        "`model` right now: <each replica's state>." """
        states = ", ".join(
            f"{r.replica_id} {r.state.value}" + (f" ({r.detail})" if r.detail else "")
            for r in self.replicas
            if r.model == model
        )
        return f"`{model}` right now" + (f": {states}." if states else ".")

    def route_request(
        self, model: str, route: str, body: dict[str, Any], session: str | None = None
    ) -> RouteRequest:
        """What routing may know of a request (`route`: "chat" or "completions", `body` in
        the OpenAI shape): its prompt keyed by the policy, unless that cannot matter
        (a single replica, and a policy that does not learn from what it routes)."""
        keyed = self.policy.learns or self.has_choice(model)
        return RouteRequest(model, self.policy.keys(model, route, body) if keyed else (), session)

    def has_choice(self, model: str) -> bool:
        """Whether `model` has more than one replica, in any state. With one, no policy has
        anything to decide, and keying the prompt (tokenizing it) would be wasted. One
        that is starting counts: the prefill routed meanwhile to its peer must be known
        to the cost rule when it is ready."""
        return self._per_model[model] > 1

    def in_flight(self, replica_id: str) -> int:
        return self._in_flight.get(replica_id, 0)

    def in_flight_per_model(self) -> dict[str, int]:
        """Per model with a replica, its requests in flight (the autoscaler's load)."""
        per = dict.fromkeys(self._models, 0)
        for rid, count in self._in_flight.items():
            r = self._replicas.get(rid)
            if r is not None:
                per[r.model] += count
        return per

    def is_ejected(self, replica: ReplicaInfo) -> bool:
        entry = self._ejected.get(replica.replica_id)
        return entry is not None and entry[0] > time.monotonic()

    def is_routable(self, replica: ReplicaInfo) -> bool:
        return replica.state is ReplicaState.READY and not self.is_ejected(replica)

    def pick(
        self, model: str, exclude: frozenset[str] = frozenset(), request: RouteRequest | None = None
    ) -> Decision | None:
        """The policy's choice among the ready replicas of `model`. Replicas the gateway
        ejected are offered only when nothing else is ready."""
        ready = [
            r
            for r in self._replicas.values()
            if r.model == model and r.state is ReplicaState.READY and r.replica_id not in exclude
        ]
        if not ready:
            return None
        healthy = [r for r in ready if not self.is_ejected(r)] or ready
        req = request or RouteRequest(model)
        decision = self.policy.choose(
            req,
            [
                Candidate(r, self._in_flight.get(r.replica_id, 0), self.prefill(r.replica_id))
                for r in healthy
            ],
        )
        self.policy.routed(req, decision)
        return decision

    def prefill(self, replica_id: str) -> float:
        return self._prefill.get(replica_id, 0.0)

    def acquire(self, replica_id: str, prefill: float = 0.0) -> None:
        """A request goes to the replica, with `prefill` prompt tokens predicted to prefill."""
        self._in_flight[replica_id] = self._in_flight.get(replica_id, 0) + 1
        if prefill > 0:
            self._prefill[replica_id] = self._prefill.get(replica_id, 0.0) + prefill

    def prefilled(self, replica_id: str, prefill: float) -> None:
        """A request's prefill is over (its first token came, or it ended)."""
        left = self._prefill.get(replica_id, 0.0) - prefill
        if left > 0.5:
            self._prefill[replica_id] = left
        else:
            self._prefill.pop(replica_id, None)

    def release(self, replica_id: str, prefill: float = 0.0) -> None:
        """A request ended; `prefill` is what was still counted of its prefill."""
        if prefill > 0:
            self.prefilled(replica_id, prefill)
        left = self._in_flight.get(replica_id, 0) - 1
        if left > 0:
            self._in_flight[replica_id] = left
        else:
            self._in_flight.pop(replica_id, None)

    def eject(self, replica: ReplicaInfo) -> bool:
        """Skip `replica` for a while; True when it was not already ejected."""
        if self._eject_s <= 0:
            return False
        fresh = not self.is_ejected(replica)
        self._ejected[replica.replica_id] = (time.monotonic() + self._eject_s, replica.generation)
        return fresh
