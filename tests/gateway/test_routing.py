"""Routing on its own (no server): the replica table (only ready replicas, ejection after a
failure and its end when the replica restarts) and each policy's choices."""

from __future__ import annotations

from gateway_harness import replica

from raylm.gateway.policy import (
    LOAD_TOKENS,
    OVERLOAD_SLACK,
    Decision,
    PrefixApproximate,
    RoundRobin,
    RouteRequest,
)
from raylm.gateway.prefix import BLOCK_CHARS, block_hashes, request_blocks, session_of
from raylm.gateway.routing import ReplicaTable
from raylm.replica import ReplicaState

MODEL = "smollm2-135m-instruct"


def table(*states: ReplicaState, eject_s: float = 60, policy: object = None) -> ReplicaTable:
    t = ReplicaTable(eject_s=eject_s, policy=policy)  # type: ignore[arg-type]
    t.update([replica(f"http://h{i}", f"r{i}", s) for i, s in enumerate(states)])
    return t


def test_least_in_flight_wins() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY, ReplicaState.READY)
    for rid in ("r0", "r0", "r1"):
        t.acquire(rid)
    assert [t.pick(MODEL).replica.replica_id for _ in range(3)] == ["r2"] * 3  # type: ignore[union-attr]
    t.release("r0")
    t.release("r0")
    picks = {t.pick(MODEL).replica.replica_id for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"r0", "r2"}  # tied at zero: they take turns


def test_only_ready_replicas_and_the_right_model() -> None:
    t = table(ReplicaState.STARTING, ReplicaState.UNHEALTHY, ReplicaState.STOPPING)
    assert t.pick(MODEL) is None
    assert t.pick("other-model") is None
    assert t.status()[0].ready == 0 and t.status()[0].total == 3


def test_exclude_and_ejection() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY)
    r0 = t.get("r0")
    assert r0 is not None
    assert t.pick(MODEL, frozenset({"r1"})).replica is r0  # type: ignore[union-attr]
    assert t.eject(r0) is True and t.eject(r0) is False
    assert {t.pick(MODEL).replica.replica_id for _ in range(4)} == {"r1"}  # type: ignore[union-attr]
    # With nothing else ready, an ejected replica is still better than no answer.
    assert t.pick(MODEL, frozenset({"r1"})).replica is r0  # type: ignore[union-attr]
    # A new generation (the controller restarted it) ends the ejection at once.
    t.update([replica("http://h0", "r0", generation=1), replica("http://h1", "r1")])
    assert t.is_routable(t.get("r0"))  # type: ignore[arg-type]


def test_in_flight_survives_a_refresh_and_release_never_goes_negative() -> None:
    t = table(ReplicaState.READY)
    t.acquire("r0")
    t.update([replica("http://h0", "r0")])
    assert t.in_flight("r0") == 1
    t.release("r0")
    t.release("r0")
    assert t.in_flight("r0") == 0


SYSTEM = "You are a support agent for ACME. " * 40  # ~1.4k characters: 5 whole blocks


def _decide(t: ReplicaTable, question: str, system: str = SYSTEM, **kw: str) -> Decision:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    key = RouteRequest(MODEL, request_blocks("chat", {"messages": messages}), kw.get("session"))
    d = t.pick(MODEL, request=key)
    assert d is not None
    return d


def _ask(t: ReplicaTable, question: str, system: str = SYSTEM, **kw: str) -> str:
    return _decide(t, question, system, **kw).replica.replica_id


def test_prefix_hashes_are_chained_whole_blocks_of_every_message() -> None:
    a = block_hashes("x" * (3 * BLOCK_CHARS + 10))
    assert len(a) == 3  # the partial tail block does not count
    assert block_hashes("x" * BLOCK_CHARS + "y" * (2 * BLOCK_CHARS))[0] == a[0]
    assert block_hashes("y" * BLOCK_CHARS + "x" * (2 * BLOCK_CHARS))[1] != a[1]  # chained
    one = {"messages": [{"role": "user", "content": "q" * 300}]}
    two = {"messages": [*one["messages"], {"role": "assistant", "content": "a" * 600}]}
    k1, k2 = request_blocks("chat", one), request_blocks("chat", two)
    assert k2[: len(k1)] == k1 and len(k2) > len(k1)  # the next turn extends the chain
    assert request_blocks("completions", {"prompt": [1, 2, 3]}) == ()
    assert session_of({"user": "alice"}, None) == "alice"
    assert session_of({"user": "alice"}, "s-1") == "s-1"


def test_a_cached_prefix_goes_to_its_replica_unless_it_is_overloaded() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY, policy=PrefixApproximate())
    long = "Rules of the ACME support desk, clause by clause. " * 330  # ~4k tokens
    first = _ask(t, "Where is my order?", long)
    other = "r1" if first == "r0" else "r0"
    # The same system prompt, other questions: the replica that has it takes them, even
    # with more work in flight than the other ...
    for _ in range(OVERLOAD_SLACK):
        t.acquire(first)
        d = _decide(t, "And my refund?", long)
        assert (d.replica.replica_id, d.reason) == (first, "prefix") and d.cached_blocks > 60
    # ... a different prompt goes where the work is least ...
    assert _ask(t, "Hi", system="Something else entirely. " * 60) == other
    # ... and past the overload bound (1.5 x the other's requests + OVERLOAD_SLACK), affinity yields
    # although the cache would still make it the cheaper replica.
    t.acquire(first)
    d = _decide(t, "And my invoice?", long)
    assert (d.replica.replica_id, d.reason) == (other, "overload")


def test_the_cost_rule_weighs_cache_against_queued_prefill_and_load() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY, policy=PrefixApproximate())
    first = _ask(t, "Q")
    # 5 cached blocks are worth 5 * BLOCK_CHARS / 4 = 320 prompt tokens not prefilled again.
    cached = 5 * BLOCK_CHARS / 4
    # A request in flight whose 200 tokens are still to prefill: first is still cheaper ...
    assert cached > 200 + LOAD_TOKENS
    t.acquire(first, prefill=200)
    assert t.prefill(first) == 200
    d = _decide(t, "Q2")
    assert (d.replica.replica_id, d.reason) == (first, "prefix")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Q2"}]
    blocks = len(request_blocks("chat", {"messages": messages}))
    assert d.prefill_tokens == (blocks - d.cached_blocks) * BLOCK_CHARS / 4
    # ... and with one more request in flight, the queue outweighs the cache.
    assert cached < 200 + 2 * LOAD_TOKENS
    t.acquire(first)
    assert _ask(t, "Q3") != first
    # Once the first request's first token is back, its prefill no longer counts.
    t.prefilled(first, 200)
    assert t.prefill(first) == 0
    t.release(first)
    t.release(first)
    assert t.in_flight(first) == 0 and t.prefill(first) == 0


def test_the_table_counts_prefill_until_the_first_token_or_the_end() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY)
    t.acquire("r0", prefill=300)
    t.acquire("r0", prefill=100)
    assert t.prefill("r0") == 400 and t.in_flight("r0") == 2
    t.prefilled("r0", 300)  # a stream's first token
    t.release("r0")  # ... and its end: nothing more to take off
    t.release("r0", prefill=100)  # a request that ended before any token came back
    assert t.prefill("r0") == 0 and t.in_flight("r0") == 0


def test_a_restarted_replica_is_forgotten_and_sessions_stick_within_the_bound() -> None:
    policy = PrefixApproximate()
    t = table(ReplicaState.READY, ReplicaState.READY, policy=policy)
    first = _ask(t, "Q")
    assert (
        policy.matched(
            first, request_blocks("chat", {"messages": [{"role": "system", "content": SYSTEM}]})
        )
        > 0
    )
    # The controller reports a new generation: its cache is gone, so is the index entry.
    t.update([replica("http://h0", "r0", generation=1), replica("http://h1", "r1", generation=1)])
    assert (
        policy.matched(
            first, request_blocks("chat", {"messages": [{"role": "system", "content": SYSTEM}]})
        )
        == 0
    )
    # A session stays on its replica (no prompt to key on needed) ...
    home = _ask(t, "Hello", system="", session="s-1")
    assert all(_ask(t, f"turn {i}", system="", session="s-1") == home for i in range(3))
    # ... but never past the overload bound.
    for _ in range(OVERLOAD_SLACK + 1):
        t.acquire(home)
    assert _ask(t, "turn 4", system="", session="s-1") != home


def test_round_robin_takes_turns_whatever_the_load() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY, policy=RoundRobin())
    t.acquire("r0")
    assert [t.pick(MODEL).replica.replica_id for _ in range(4)] == ["r1", "r0", "r1", "r0"]  # type: ignore[union-attr]
