"""Admission per model: a bounded wait queue in front of the replicas, interactive first.

vLLM queues what it cannot batch in arrival order, so a burst of batch work delays every
interactive request behind it. With `max_in_flight_per_replica` set, the gateway lets at
most that many requests per ready replica of a model through at once; the rest wait here,
where a request of an `interactive` key is always let through before one of a `batch` key
(raylm.gateway.keys), and in arrival order within a class. The queue is bounded
(`max_queued_per_model`, past it 503 `queue_full`; a full queue refuses its newest batch
request to make room for an interactive one) and so is the wait (`queue_timeout_s`, then
503 `queue_timeout`), both with Retry-After. A freed slot is handed to the next waiter
directly, so a newcomer never overtakes the queue. The counts are each gateway
process's own: with N gateway workers a model may have N times the limit in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Literal

from raylm.gateway.responses import HttpError, unavailable

Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")
"""In the order they are let through."""


class Admission:
    """The slots and queues of every model. `ready(model)` counts its ready replicas."""

    def __init__(
        self,
        per_replica: int | None,
        max_queued: int,
        timeout_s: float,
        retry_after_s: int,
        ready: Callable[[str], int],
    ) -> None:
        self.per_replica = per_replica
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._ready = ready
        self._held: dict[str, int] = {}
        """Per model, requests let through and not yet done."""
        self._queues: dict[str, dict[Priority, deque[asyncio.Future[None]]]] = {}
        self.refused: dict[tuple[str, str], int] = {}
        """Per (model, reason), requests refused by the queue: for /metrics."""

    def _capacity(self, model: str) -> int:
        assert self.per_replica is not None
        return self.per_replica * self._ready(model)

    def waiting(self, model: str, priority: Priority) -> int:
        """Requests of `priority` waiting for `model` now."""
        queue = self._queues.get(model, {}).get(priority)
        return sum(not f.done() for f in queue) if queue else 0

    def models(self) -> list[str]:
        """Models that have had a queue."""
        return list(self._queues)

    async def enter(self, model: str, priority: Priority) -> bool:
        """Wait for a slot of `model`; True once one is held (pass it back with `leave`),
        False when admission is off or the model has no ready replica (routing answers
        that). HttpError 503 when the queue is full or the wait too long."""
        if self.per_replica is None:
            return False
        capacity = self._capacity(model)
        if capacity == 0:
            return False
        queues = self._queues.setdefault(model, {p: deque() for p in PRIORITIES})
        held = self._held.get(model, 0)
        if held < capacity and not any(queues.values()):
            self._held[model] = held + 1
            return True
        if sum(self.waiting(model, p) for p in PRIORITIES) >= self.max_queued:
            full = f"`{model}` has {self.max_queued} requests waiting, its queue's limit"
            # An interactive request takes the place of the newest batch one, if any.
            bumped = self._newest_batch(queues) if priority == "interactive" else None
            if bumped is None:
                raise self._refuse(model, "queue_full", full)
            bumped.set_exception(self._refuse(model, "queue_full", full))
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queues[priority].append(slot)
        try:
            await asyncio.wait_for(asyncio.shield(slot), self.timeout_s)
        except TimeoutError:
            if slot.done():  # handed a slot as the wait ran out: keep it
                return True
            slot.cancel()
            raise self._refuse(
                model,
                "queue_timeout",
                f"a request for `{model}` waited {self.timeout_s:g} s without a free replica",
            ) from None
        except asyncio.CancelledError:  # the client left
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self.leave(model)  # the slot it was handed goes to the next waiter
            slot.cancel()
            raise
        return True

    @staticmethod
    def _newest_batch(
        queues: dict[Priority, deque[asyncio.Future[None]]],
    ) -> asyncio.Future[None] | None:
        for slot in reversed(queues["batch"]):
            if not slot.done():
                return slot
        return None

    def leave(self, model: str) -> None:
        """A request let through by `enter` is done: its slot goes to the next waiter."""
        self._held[model] = self._held.get(model, 1) - 1
        self._let_through(model)

    def poke(self) -> None:
        """Replicas may have become ready: let waiters through into the new slots."""
        for model in self._queues:
            self._let_through(model)

    def _let_through(self, model: str) -> None:
        queues = self._queues.get(model)
        if not queues or self.per_replica is None:
            return
        capacity = self._capacity(model)
        for priority in PRIORITIES:
            queue = queues[priority]
            while queue and self._held.get(model, 0) < capacity:
                slot = queue.popleft()
                if not slot.done():  # not given up on (timed out, client gone)
                    slot.set_result(None)
                    self._held[model] = self._held.get(model, 0) + 1

    def _refuse(self, model: str, code: str, why: str) -> HttpError:
        key = (model, code)
        self.refused[key] = self.refused.get(key, 0) + 1
        message = f"The gateway is at capacity: {why}; retry shortly."
        return HttpError(unavailable(message, self.retry_after_s, code))
