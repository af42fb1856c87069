"""How the gateway chooses a replica: the routing policies, behind one interface.

Every policy sees the same candidates (the ready replicas of the model that routing has not
set aside, each with the requests the gateway has in flight on it) and returns a `Decision`
with its reason, which `/metrics` counts. The spec's `routing` names the policy.

- `least-outstanding`: the fewest requests in flight; ties take turns.
- `round-robin`: each replica in turn.
- `prefix-approximate`: the lowest predicted cost, from an index of the prompts this gateway
  routed (see `PrefixApproximate`). It needs nothing from the engines.
- `kv-aware`: the same cost rule over the engines' exact cache contents, from their KV
  events (raylm.gateway.kv_policy).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from raylm.gateway.prefix import BLOCK_TOKENS, request_blocks
from raylm.replica import ReplicaInfo

if TYPE_CHECKING:
    from raylm.gateway.kv_policy import KvAware

PolicyName = Literal["least-outstanding", "round-robin", "prefix-approximate", "kv-aware"]
POLICIES: tuple[PolicyName, ...] = (
    "least-outstanding",
    "round-robin",
    "prefix-approximate",
    "kv-aware",
)


@dataclass(frozen=True)
class RouteRequest:
    """What routing may know of a request."""

    model: str
    blocks: tuple[int, ...] = ()
    """The prompt's chained block keys, as the policy keys prompts (`RoutingPolicy.keys`);
    empty: not keyed."""
    session: str | None = None
    """The client's session hint (`x-session-id` or OpenAI's `user`), if any."""


@dataclass(frozen=True)
class Candidate:
    """A replica that may take the request, with the gateway's requests in flight on it."""

    replica: ReplicaInfo
    in_flight: int
    prefill: float = 0.0
    """Prompt tokens the gateway predicts this replica has still to prefill for the requests
    in flight on it (each request's uncached tokens until its first token comes back)."""


@dataclass(frozen=True)
class Decision:
    """The replica chosen, and why (a `/metrics` label)."""

    replica: ReplicaInfo
    reason: str
    cached_blocks: int = 0
    """Blocks of the prompt the policy expects the replica to have cached."""
    cached_tokens: float = 0.0
    """The same in prompt tokens (for `/metrics`: predicted against the engine's hits)."""
    prefill_tokens: float = 0.0
    """Prompt tokens the replica is predicted to prefill for this request (0: not known)."""


class RoutingPolicy(Protocol):
    """The interface every policy implements."""

    name: str
    learns: bool
    """Whether the policy learns from what it routes (its keys are wanted even when a
    model has one replica, for when it has more); else prompts go unkeyed then."""

    def keys(self, model: str, route: str, body: dict[str, Any]) -> tuple[int, ...]:
        """The request's prompt as this policy's block keys (empty: it does not key)."""
        ...

    def choose(self, request: RouteRequest, candidates: list[Candidate]) -> Decision:
        """Pick one of `candidates` (never empty)."""
        ...

    def routed(self, request: RouteRequest, decision: Decision) -> None:
        """`request` was sent as `decision` says (policies that learn from routing record it)."""
        ...

    def forget(self, replica_id: str) -> None:
        """The replica went away or restarted: whatever it had cached is gone."""
        ...


@dataclass
class _Turns:
    """Ties take turns, so equal replicas share the work."""

    turn: int = 0

    def pick(self, tied: list[Candidate]) -> Candidate:
        self.turn += 1
        return tied[self.turn % len(tied)]


@dataclass
class LeastOutstanding:
    """The fewest requests in flight; ties take turns."""

    name: str = "least-outstanding"
    learns: bool = False
    _turns: _Turns = field(default_factory=_Turns)

    def keys(self, model: str, route: str, body: dict[str, Any]) -> tuple[int, ...]:
        return ()

    def choose(self, request: RouteRequest, candidates: list[Candidate]) -> Decision:
        least = min(c.in_flight for c in candidates)
        tied = [c for c in candidates if c.in_flight == least]
        return Decision(self._turns.pick(tied).replica, self.name)

    def routed(self, request: RouteRequest, decision: Decision) -> None:
        return None

    def forget(self, replica_id: str) -> None:
        return None


@dataclass
class RoundRobin:
    """Each replica in turn, whatever its load."""

    name: str = "round-robin"
    learns: bool = False
    _turns: _Turns = field(default_factory=_Turns)

    def keys(self, model: str, route: str, body: dict[str, Any]) -> tuple[int, ...]:
        return ()

    def choose(self, request: RouteRequest, candidates: list[Candidate]) -> Decision:
        ordered = sorted(candidates, key=lambda c: c.replica.replica_id)
        return Decision(self._turns.pick(ordered).replica, self.name)

    def routed(self, request: RouteRequest, decision: Decision) -> None:
        return None

    def forget(self, replica_id: str) -> None:
        return None


# The weights of the cost rule, in prompt tokens to prefill (a request's time to first
# token is about the prefill queued ahead of it plus its own). Each replica's queued prefill
# is counted as such (Candidate.prefill); on top, a request in flight counts LOAD_TOKENS,
# its decode steps sharing the engine with the new prefill. Swept on a GPU (bench_routing,
# 2026-11-23, results/routing-kv-load-sweep-*): 0 cost 7 % TTFT p50 and throughput on
# shared prefixes; 64 and 512 were alike within the runs' noise.
LOAD_TOKENS = 64.0
# Affinity never sends work to a replica with more than OVERLOAD_FACTOR x the least loaded
# one's requests plus OVERLOAD_SLACK: one hot prefix cannot pile onto one replica. A slack
# of 4 never bound at a concurrency of 4 over 2 replicas (bench_routing, 2026-11-23: 12 of
# 16 requests on one replica, TTFT p99 1.8x); 1 keeps low loads within one request.
OVERLOAD_FACTOR = 1.5
OVERLOAD_SLACK = 1
# Blocks remembered per replica (least recently used go first): ~16M characters of prompts.
INDEX_BLOCKS = 65536
SESSIONS = 65536


class Sessions:
    """The session hint's memory (`x-session-id` or OpenAI's `user` -> the replica its last
    request went to), least recently used first out."""

    def __init__(self, limit: int = SESSIONS) -> None:
        self._last: OrderedDict[str, str] = OrderedDict()
        self._limit = limit

    def replica_of(self, session: str | None) -> str | None:
        return self._last.get(session) if session is not None else None

    def routed(self, session: str | None, replica_id: str) -> None:
        if session is None:
            return
        self._last[session] = replica_id
        self._last.move_to_end(session)
        while len(self._last) > self._limit:
            self._last.popitem(last=False)

    def forget(self, replica_id: str) -> None:
        for s in [s for s, r in self._last.items() if r == replica_id]:
            del self._last[s]


class PrefixApproximate:
    """The lowest predicted cost: the prompt's blocks the replica has not seen, in prefill
    tokens, plus LOAD_TOKENS per request already in flight on it. What a replica "has seen"
    is what this gateway sent it (an estimate: the engine may have evicted it).

    A replica past the overload bound is not chosen for affinity: the least loaded one is
    (reason `overload`). A session hint picks its last replica while that one is within the
    bound (reason `session`). With no prompt text, or nothing cached anywhere, the least
    loaded replica is chosen (`no-key`, `no-match`).
    """

    name = "prefix-approximate"
    learns = True

    def __init__(self, index_blocks: int = INDEX_BLOCKS, sessions: int = SESSIONS) -> None:
        self._index_blocks = index_blocks
        # block hash -> replicas it was sent to; per replica, its blocks, least recent first
        self._where: dict[int, set[str]] = {}
        self._order: dict[str, OrderedDict[int, None]] = {}
        self._sessions = Sessions(sessions)
        self._turns = _Turns()
        self._affinity = Affinity(self._turns, LeastOutstanding(_turns=self._turns))

    def matches(self, blocks: tuple[int, ...], replica_ids: set[str]) -> dict[str, int]:
        """How many leading blocks of the prompt each replica has seen. Hashes are chained,
        so the deepest block a replica has seen implies all before it: one pass from the
        end, stopping once every replica is placed."""
        out = dict.fromkeys(replica_ids, 0)
        left = set(replica_ids)
        for i in range(len(blocks) - 1, -1, -1):
            have = self._where.get(blocks[i])
            if have and (hit := have & left):
                for rid in hit:
                    out[rid] = i + 1
                left -= hit
                if not left:
                    break
        return out

    def matched(self, replica_id: str, blocks: tuple[int, ...]) -> int:
        return self.matches(blocks, {replica_id})[replica_id]

    def keys(self, model: str, route: str, body: dict[str, Any]) -> tuple[int, ...]:
        return request_blocks(route, body)

    def choose(self, request: RouteRequest, candidates: list[Candidate]) -> Decision:
        ids = {c.replica.replica_id for c in candidates}
        matches = self.matches(request.blocks, ids) if request.blocks else dict.fromkeys(ids, 0)
        session = self._sessions.replica_of(request.session)
        return self._affinity.choose(request, candidates, matches, BLOCK_TOKENS, session)

    def routed(self, request: RouteRequest, decision: Decision) -> None:
        replica_id = decision.replica.replica_id
        if request.blocks:
            order = self._order.setdefault(replica_id, OrderedDict())
            for b in request.blocks:
                if b in order:
                    order.move_to_end(b)
                else:
                    order[b] = None
                    self._where.setdefault(b, set()).add(replica_id)
            while len(order) > self._index_blocks:
                self._drop(replica_id, order.popitem(last=False)[0])
        self._sessions.routed(request.session, replica_id)

    def forget(self, replica_id: str) -> None:
        for b in self._order.pop(replica_id, {}):
            self._drop(replica_id, b)
        self._sessions.forget(replica_id)

    def _drop(self, replica_id: str, block: int) -> None:
        have = self._where.get(block)
        if have is not None:
            have.discard(replica_id)
            if not have:
                del self._where[block]


@dataclass
class Affinity:
    """The cost rule `prefix-approximate` and `kv-aware` share: the lowest predicted cost,
    the prompt's uncached tokens plus the prefill already queued on the replica plus
    LOAD_TOKENS per request in flight, within the overload bound. Reasons: `session` (the
    hint's replica, within the bound), `no-key` (nothing to match on, or the model has a
    single replica, so the prompt was not keyed: least loaded),
    `no-match` (cached nowhere: the least queued work), `prefix` (the cheapest has part of
    the prompt), `cost` (the cheapest has none of it), `overload` (the cheapest
    is past the bound: least loaded instead)."""

    turns: _Turns
    least: LeastOutstanding

    def choose(
        self,
        request: RouteRequest,
        candidates: list[Candidate],
        matches: dict[str, int],
        block_tokens: float,
        session_replica: str | None,
    ) -> Decision:
        def decide(replica: ReplicaInfo, reason: str) -> Decision:
            cached = matches.get(replica.replica_id, 0)
            uncached = (len(request.blocks) - cached) * block_tokens
            return Decision(replica, reason, cached, cached * block_tokens, uncached)

        bound = OVERLOAD_FACTOR * min(c.in_flight for c in candidates) + OVERLOAD_SLACK
        within = [c for c in candidates if c.in_flight <= bound]
        for c in within:
            if c.replica.replica_id == session_replica:
                return decide(c.replica, "session")
        if not request.blocks:
            return decide(self.least.choose(request, candidates).replica, "no-key")

        def cost(c: Candidate) -> float:
            uncached = (len(request.blocks) - matches[c.replica.replica_id]) * block_tokens
            return uncached + c.prefill + LOAD_TOKENS * c.in_flight

        best = min(candidates, key=cost)
        if best.in_flight > bound:
            return decide(self.least.choose(request, within).replica, "overload")
        tied = [c for c in within if cost(c) == cost(best)]
        chosen = self.turns.pick(tied) if len(tied) > 1 else best
        if matches[chosen.replica.replica_id]:
            return decide(chosen.replica, "prefix")
        return decide(chosen.replica, "cost" if any(matches.values()) else "no-match")


def make_policy(name: PolicyName, kv: KvAware | None = None) -> RoutingPolicy:
    """The policy the spec names. `kv-aware` is built by its owner (the gateway, which holds
    its index and tokenizers: raylm.gateway.kv_policy) and passed in as `kv`."""
    if name == "round-robin":
        return RoundRobin()
    if name == "prefix-approximate":
        return PrefixApproximate()
    if name == "kv-aware":
        if kv is None:
            raise ValueError("kv-aware routing needs its KvAware (index and tokenizers)")
        return kv
    return LeastOutstanding()
