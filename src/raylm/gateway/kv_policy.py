"""`kv-aware` routing: the shared cost rule (raylm.gateway.policy.Affinity) over what the
engines really cache.

A request's prompt is tokenized as the engine will see it (raylm.gateway.tokens) and cut
into the engine's blocks, keyed like the replicas' KV events (raylm.kv.blocks); the
`BlockIndex` says how many leading blocks each replica holds. Until a model's block size is
known (its first event) or when a prompt cannot be tokenized, requests are routed by load
(reason `no-key`).
"""

from __future__ import annotations

from typing import Any

from raylm.gateway.kv_index import BlockIndex
from raylm.gateway.policy import (
    SESSIONS,
    Affinity,
    Candidate,
    Decision,
    LeastOutstanding,
    RouteRequest,
    Sessions,
    _Turns,
)
from raylm.gateway.tokens import PromptTokens
from raylm.kv.blocks import block_keys


class KvAware:
    """The lowest predicted cost over the engines' exact prefix caches."""

    name = "kv-aware"

    def __init__(self, index: BlockIndex, tokens: PromptTokens, sessions: int = SESSIONS) -> None:
        self.index = index
        self.tokens = tokens
        self.block_sizes: dict[str, int] = {}
        """Per served model, its engines' block size (set by the gateway from the events)."""
        self._turns = _Turns()
        self._affinity = Affinity(self._turns, LeastOutstanding(_turns=self._turns))
        self._sessions = Sessions(sessions)

    def keys(self, model: str, route: str, body: dict[str, Any]) -> tuple[int, ...]:
        size = self.block_sizes.get(model, 0)
        if size <= 0:
            return ()
        ids = self.tokens.ids(model, route, body)
        return tuple(block_keys(ids, size)) if ids else ()

    def choose(self, request: RouteRequest, candidates: list[Candidate]) -> Decision:
        ids = {c.replica.replica_id for c in candidates}
        matches = (
            self.index.matches(request.blocks, ids) if request.blocks else dict.fromkeys(ids, 0)
        )
        session = self._sessions.replica_of(request.session)
        size = self.block_sizes.get(request.model, 0)
        return self._affinity.choose(request, candidates, matches, float(size), session)

    def routed(self, request: RouteRequest, replica_id: str) -> None:
        if request.blocks:
            self.index.note_routed(replica_id, request.blocks)
        self._sessions.routed(request.session, replica_id)

    def forget(self, replica_id: str) -> None:
        self.index.forget(replica_id)
        self._sessions.forget(replica_id)
