"""When a removed replica has drained (raylm.serve.drain): the gateways' reports decide, in
milliseconds here; the drain under a real client's load is in test_lifecycle.py (a rolling
update and a scale-down that cut no stream)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from raylm.autoscaling import LoadReport
from raylm.serve import drain
from raylm.serve.scaling import Scaling


class _Reports(Scaling):
    def __init__(self) -> None:
        self._loads = {}

    def report(self, gateway: str, draining: dict[str, int], age: float = 0.0) -> None:
        r = LoadReport(gateway=gateway, load={}, draining=draining)
        self._loads[gateway] = (time.monotonic() - age, r)


def test_a_drain_waits_for_every_gateway_to_see_the_replica_stopping_with_nothing_open() -> None:
    c = _Reports()
    assert c._still_routed("m-0") is None  # no gateway reports: the engine's count decides
    c.report("a", {})  # its table still shows m-0 ready: it may route a request there
    c.report("b", {"m-0": 2})
    assert c._still_routed("m-0") == (1, 2, 0)
    c.report("a", {"m-0": 0})
    assert c._still_routed("m-0") == (0, 2, 0)
    c.report("b", {"m-0": 0})
    c.report("gone", {}, age=120)  # a gateway gone for minutes holds nothing up
    assert c._still_routed("m-0") == (0, 0, 0)
    c.report("quiet", {}, age=20)  # silent for 20 s: the engine's count must be 0 too
    assert c._still_routed("m-0") == (0, 0, 1)


def test_wait_drained_ends_at_nothing_routed_or_at_the_drain_timeout() -> None:
    async def scenario() -> None:
        seen = iter([(1, 0, 0), (0, 3, 0), (0, 0, 0)])
        r = SimpleNamespace(
            replica_id="m-0", config=SimpleNamespace(drain_timeout_s=30.0), detail=""
        )
        details = []

        def still_routed(rid: str) -> tuple[int, int, int] | None:
            details.append(r.detail)
            return next(seen)

        assert await drain.wait_drained(r, still_routed)  # type: ignore[arg-type]
        assert details[1:] == [
            "draining: 0 request(s) open, 1 gateway(s) not yet told",
            "draining: 3 request(s) open",
        ]
        r.config.drain_timeout_s = 0.6
        start = time.monotonic()
        assert not await drain.wait_drained(r, lambda rid: (0, 1, 0))  # type: ignore[arg-type]
        assert time.monotonic() - start < 5

    asyncio.run(scenario())
