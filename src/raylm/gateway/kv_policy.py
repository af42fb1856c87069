"""`kv-aware` routing: the shared cost rule (raylm.gateway.policy.Affinity) over what the
engines really cache.

A request's prompt is tokenized as the engine will see it (raylm.gateway.tokens) and cut
into the engine's blocks, keyed like the replicas' KV events (raylm.kv.blocks); the
`BlockIndex` says how many leading blocks each replica holds. Until a model's block size is
known (its first event) or when a prompt cannot be tokenized, requests are routed by load
(reason `no-key`).
"""

from __future__ import annotations

from collections import OrderedDict
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
from raylm.kv.blocks import ROOT_KEY, block_keys

MEMO_KEYS = 1 << 20
"""Block keys remembered for prompt pieces (the text between special tokens): ~50 MiB."""


class KvAware:
    """The lowest predicted cost over the engines' exact prefix caches."""

    name = "kv-aware"
    learns = False  # the engines' events say what is cached, not the routing

    def __init__(self, index: BlockIndex, tokens: PromptTokens, sessions: int = SESSIONS) -> None:
        self.index = index
        self.tokens = tokens
        self.block_sizes: dict[str, int] = {}
        """Per served model, its engines' block size (set by the gateway from the events)."""
        self._turns = _Turns()
        self._affinity = Affinity(self._turns, LeastOutstanding(_turns=self._turns))
        self._sessions = Sessions(sessions)
        self._memo: OrderedDict[
            tuple[str, int, int, tuple[int, ...], int, int],
            tuple[int, tuple[int, ...], list[int]],
        ] = OrderedDict()
        self._memo_keys = 0

    def keys(self, model: str, route: str, body: dict[str, Any]) -> tuple[int, ...]:
        size = self.block_sizes.get(model, 0)
        if size <= 0:
            return ()
        pieces = self.tokens.pieces(model, route, body)
        if not pieces:
            return ()
        keys: list[int] = []
        parent: int = ROOT_KEY
        tail: tuple[int, ...] = ()
        for text, ids in pieces:
            if not text:  # not a cut of a rendered chat: nothing to remember it by
                new = block_keys(tail + tuple(ids), size, parent)
                keys += new
                break
            parent, tail, new = self._piece_keys(model, size, parent, tail, text, ids)
            keys += new
        return tuple(keys)

    def _piece_keys(
        self, model: str, size: int, parent: int, tail: tuple[int, ...], text: str, ids: list[int]
    ) -> tuple[int, tuple[int, ...], list[int]]:
        """The keys of the whole blocks that `ids` completes after `tail` (the tokens left
        over from the pieces before) chained on `parent`; the new parent and tail with them.
        Remembered by what determines them (the text by its length and hash: a collision
        costs only a worse routing choice), so a shared system prompt or an earlier turn is
        keyed once; least recently used first out, within MEMO_KEYS keys."""
        memo_key = (model, size, parent, tail, len(text), hash(text))
        hit = self._memo.get(memo_key)
        if hit is not None:
            self._memo.move_to_end(memo_key)
            return hit
        tokens = tail + tuple(ids)
        whole = len(tokens) // size * size
        new = block_keys(tokens[:whole], size, parent)
        hit = (new[-1] if new else parent, tokens[whole:], new)
        self._memo[memo_key] = hit
        self._memo_keys += len(new) + 1
        while self._memo_keys > MEMO_KEYS and self._memo:
            self._memo_keys -= len(self._memo.popitem(last=False)[1][2]) + 1
        return hit

    def choose(self, request: RouteRequest, candidates: list[Candidate]) -> Decision:
        ids = {c.replica.replica_id for c in candidates}
        matches = (
            self.index.matches(request.blocks, ids) if request.blocks else dict.fromkeys(ids, 0)
        )
        session = self._sessions.replica_of(request.session)
        size = self.block_sizes.get(request.model, 0)
        return self._affinity.choose(request, candidates, matches, float(size), session)

    def routed(self, request: RouteRequest, decision: Decision) -> None:
        replica_id = decision.replica.replica_id
        if request.blocks:
            # The leading blocks the replica was found to hold need no pending entry.
            self.index.note_routed(replica_id, request.blocks[decision.cached_blocks :])
        self._sessions.routed(request.session, replica_id)

    def forget(self, replica_id: str) -> None:
        self.index.forget(replica_id)
        self._sessions.forget(replica_id)
