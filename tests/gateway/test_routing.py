"""The routing policy on its own: least requests in flight, ties take turns, only ready
replicas, ejection after a failure and its end when the replica restarts."""

from __future__ import annotations

from gateway_harness import replica

from raylm.gateway.routing import ReplicaTable
from raylm.replica import ReplicaState


def table(*states: ReplicaState, eject_s: float = 60) -> ReplicaTable:
    t = ReplicaTable(eject_s=eject_s)
    t.update([replica(f"http://h{i}", f"r{i}", s) for i, s in enumerate(states)])
    return t


def test_least_in_flight_wins() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY, ReplicaState.READY)
    for rid in ("r0", "r0", "r1"):
        t.acquire(rid)
    assert [t.pick("smollm2-135m-instruct").replica_id for _ in range(3)] == ["r2"] * 3  # type: ignore[union-attr]
    t.release("r0")
    t.release("r0")
    picks = {t.pick("smollm2-135m-instruct").replica_id for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"r0", "r2"}  # tied at zero: they take turns


def test_only_ready_replicas_and_the_right_model() -> None:
    t = table(ReplicaState.STARTING, ReplicaState.UNHEALTHY, ReplicaState.STOPPING)
    assert t.pick("smollm2-135m-instruct") is None
    assert t.pick("other-model") is None
    assert t.status()[0].ready == 0 and t.status()[0].total == 3


def test_exclude_and_ejection() -> None:
    t = table(ReplicaState.READY, ReplicaState.READY)
    r0 = t.get("r0")
    assert r0 is not None
    assert t.pick("smollm2-135m-instruct", frozenset({"r1"})) is r0
    assert t.eject(r0) is True and t.eject(r0) is False
    assert {t.pick("smollm2-135m-instruct").replica_id for _ in range(4)} == {"r1"}  # type: ignore[union-attr]
    # With nothing else ready, an ejected replica is still better than no answer.
    assert t.pick("smollm2-135m-instruct", frozenset({"r1"})) is r0
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
