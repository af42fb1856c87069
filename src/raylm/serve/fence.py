"""A rank whose node has lost the cluster stops its own vLLM (fencing).

When a node is cut off the network, the controller hears nothing from its ranks, fails the
replica and starts it again elsewhere; Ray declares the node dead. The cut-off node does not
know: its raylet learns it only when its reconnect backoff next reaches the GCS (over 300 s
once, on 2 busy cores), and until then its vLLM holds the devices and would answer anyone
who reaches it. So each rank asks the cluster, every 10 s, whether its node is still alive,
and stops its vLLM when the answer is no, or when no answer came for `FENCE_S`: by then the
controller has replaced it.
"""

from __future__ import annotations

import asyncio
import random
import time

FENCE_S = 90.0
"""How long a rank that cannot reach the cluster keeps its vLLM."""
_EVERY_S = 10.0
_ASK_TIMEOUT_S = 10.0


def node_alive(node_id: str) -> bool | None:
    """Whether the cluster sees `node_id` alive (None: it does not know the node)."""
    import ray

    for n in ray.nodes():
        if n.get("NodeID") == node_id:
            return bool(n.get("Alive"))
    return None


async def until_fenced(node_id: str, every_s: float = _EVERY_S, fence_s: float = FENCE_S) -> str:
    """Return, with the reason, once the cluster says `node_id` is dead or has not answered
    for `fence_s`. One question is in flight at a time: a call stuck on a cut-off network
    is waited for, never asked again beside it."""
    asking: asyncio.Future[bool | None] | None = None
    last_ok = time.monotonic()
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s * random.uniform(0.8, 1.2))
        if asking is None or asking.done():
            asking = loop.run_in_executor(None, node_alive, node_id)
            asking.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        try:
            alive = await asyncio.wait_for(asyncio.shield(asking), _ASK_TIMEOUT_S)
        except Exception:  # a timeout, or Ray's error: no answer this time
            alive = None
        if alive:
            last_ok = time.monotonic()
        elif alive is False:
            return "the cluster declared its node dead"
        elif time.monotonic() - last_ok > fence_s:
            return f"it has not reached the cluster for {fence_s:.0f} s"
