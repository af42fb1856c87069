"""The dashboard's events feed (raylm.gateway.events): what a table refresh and a failover
record. Pure: tables are built here; the feed on a real deployment is in
tests/serve/test_dashboard.py."""

from __future__ import annotations

from raylm.gateway.events import EventLog
from raylm.replica import ReplicaInfo, ReplicaState


def _r(rid: str, state: ReplicaState, restarts: int = 0, detail: str = "") -> ReplicaInfo:
    return ReplicaInfo(
        replica_id=rid,
        model="m",
        url="http://10.0.0.2:8001",
        node="10.0.0.2",
        state=state,
        restarts=restarts,
        detail=detail,
    )


def test_each_change_of_the_table_is_one_event_and_the_first_table_none() -> None:
    log = EventLog()
    log.table([_r("m-0", ReplicaState.READY)])
    assert log.since(0) == []  # what was before this gateway started is not its to tell
    log.table([_r("m-0", ReplicaState.READY), _r("m-1", ReplicaState.STARTING)])
    log.table(
        [
            _r("m-0", ReplicaState.DEAD, detail="vLLM exited with code -9"),
            _r("m-1", ReplicaState.READY),
        ]
    )
    log.table([_r("m-0", ReplicaState.STARTING, restarts=1), _r("m-1", ReplicaState.READY)])
    log.table(
        [
            _r("m-0", ReplicaState.STARTING, restarts=1),
            _r("m-1", ReplicaState.STOPPING, detail="draining: 1 request(s) open"),
        ]
    )
    log.table([_r("m-0", ReplicaState.READY, restarts=1)])
    log.add("failover", "m-0", "failed before answering: connection refused")
    got = [(e.seq, e.kind, e.replica) for e in log.since(0)]
    assert got == [
        (1, "started", "m-1"),
        (2, "not-ready", "m-0"),
        (3, "ready", "m-1"),
        (4, "restarted", "m-0"),
        (5, "stopping", "m-1"),
        (6, "ready", "m-0"),
        (7, "removed", "m-1"),
        (8, "failover", "m-0"),
    ]
    assert log.since(0)[1].message == "dead on 10.0.0.2: vLLM exited with code -9"
    assert [e.seq for e in log.since(6)] == [7, 8]


def test_the_feed_keeps_its_last_events() -> None:
    log = EventLog(capacity=3)
    for i in range(5):
        log.add("failover", f"m-{i}", "x")
    assert [e.replica for e in log.since(0)] == ["m-2", "m-3", "m-4"]
