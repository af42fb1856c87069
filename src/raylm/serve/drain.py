"""When a replica being removed has drained, so it can be stopped without cutting a request.

The gateways decide it: each reports, every refresh, the stopping replicas its table shows
and the requests it still has open to each (a stream until its last byte). Once every
gateway reporting now has seen the replica stopping with nothing open to it, no request can
reach it again, and none is left on it. Only the gateway knows a request from the moment it
picks a replica; the engine's /metrics count it later (after its first step), so they
cannot tell a request that is about to arrive from none. When no gateway reports (its
process is gone), the engine's count decides, after the gateways' refresh time; when one
stopped reporting within the last minute (it may not reach the controller, and route on an
old table), the engine's count must be 0 as well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import ray

from raylm.serve.replica_slot import Replica

# With no gateway reporting: how long a replica is shown stopping before its engine's count
# is trusted (every gateway reads the table each 0.5 s).
UNROUTED_S = 2.0
_POLL_S = 0.5
_STATUS_TIMEOUT_S = 10.0


async def wait_drained(
    r: Replica, still_routed: Callable[[str], tuple[int, int, int] | None]
) -> bool:
    """Wait until `r` has drained (True) or its drain_timeout_s ran out (False). `r` is
    already shown stopping; `still_routed` is the controller's view of the gateways'
    reports (serve/scaling.py)."""
    start = time.monotonic()
    deadline = start + r.config.drain_timeout_s
    while time.monotonic() < deadline:
        routed = still_routed(r.replica_id)
        if routed is not None:
            unaware, open_, stale = routed
            if (unaware, open_) == (0, 0) and (stale == 0 or await _in_engine(r) == 0):
                return True
            r.detail = f"draining: {open_} request(s) open" + (
                f", {unaware} gateway(s) not yet told" if unaware else ""
            )
        elif time.monotonic() - start >= UNROUTED_S:
            left = await _in_engine(r)
            if left == 0:
                return True
            r.detail = f"draining: {left if left is not None else '?'} request(s) left"
        await asyncio.sleep(_POLL_S)
    return False


async def _in_engine(r: Replica) -> int | None:
    """Requests `r`'s engine holds now, by its /metrics; None when it cannot tell."""
    try:
        return await asyncio.wait_for(
            r.supervisors[0].requests_in_engine.remote(), _STATUS_TIMEOUT_S
        )
    except (TimeoutError, ray.exceptions.RayError):
        return None
