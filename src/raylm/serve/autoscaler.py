"""The autoscaling rule of one model: from the gateways' load to a replica count. Pure: the
controller (serve/controller.py) passes the time, the load and today's count, applies
what it returns (checking room first, draining on the way down) and reports back.

The load is the mean over `look_back_s` of the requests in flight plus waiting at the
gateways; it wants ceil(load / target) replicas, inside the bounds. A change is decided
only once the load has wanted it for the whole delay (`upscale_delay_s` up,
`downscale_delay_s` down): the smallest count wanted over an upward streak, the largest over
a downward one, so that a burst or a lull alone moves nothing. A replica starting counts as
one: its load is already spread, so the same load never adds two.
"""

from __future__ import annotations

import math
import time
from collections import deque

from raylm.autoscaling import AutoscaleStatus, Autoscaling


class Autoscaler:
    """One model's load window, streak and decisions."""

    def __init__(self, model: str, settings: Autoscaling) -> None:
        self.model = model
        self.settings = settings
        self._samples: deque[tuple[float, float]] = deque()
        self._streak: tuple[int, float, int] | None = None
        """(direction +1/-1, since, count the streak holds to)."""
        self.load = 0.0
        self.wanted = settings.min_replicas
        self.ups = 0
        self.downs = 0
        self.last = ""
        self.last_at = 0.0
        self.paused = ""
        """Why the last pass decided nothing without looking at the load, if so."""

    def observe(self, now: float, load: float, desired: int) -> int | None:
        """One sample of the load (at monotonic `now`), with `desired` replicas kept now:
        the count to move to, or None."""
        s = self.settings
        self.paused = ""
        self._samples.append((now, load))
        while self._samples and self._samples[0][0] < now - s.look_back_s:
            self._samples.popleft()
        self.load = sum(x for _, x in self._samples) / len(self._samples)
        self.wanted = s.bounded(math.ceil(self.load / s.target_in_flight_per_replica - 1e-9))
        if desired != s.bounded(desired):
            self._streak = None
            return s.bounded(desired)  # outside new bounds: no load needed to say so
        direction = (self.wanted > desired) - (self.wanted < desired)
        if direction == 0:
            self._streak = None
            return None
        if self._streak is None or self._streak[0] != direction:
            self._streak = (direction, now, self.wanted)
        _, since, held = self._streak
        held = min(held, self.wanted) if direction > 0 else max(held, self.wanted)
        self._streak = (direction, since, held)
        delay = s.upscale_delay_s if direction > 0 else s.downscale_delay_s
        if now - since < delay:
            return None
        self._streak = None
        return held

    def why(self, desired: int) -> str:
        """The reason for a change, in words."""
        return (
            f"load {self.load:.1f} over {desired} replica(s), target "
            f"{self.settings.target_in_flight_per_replica:g} each"
        )

    def decided(self, before: int, after: int, why: str) -> None:
        """Record a change the controller made (or could not make: before == after)."""
        self.ups += after > before
        self.downs += after < before
        verb = "scaled" if after != before else "stayed at"
        self.last = f"{verb} {before}" + (f" -> {after}" if after != before else "") + f": {why}"
        self.last_at = time.time()

    def pause(self, why: str) -> None:
        """No decision this pass (a rollout, no load signal): the streak starts over."""
        self._streak = None
        self._samples.clear()
        self.paused = why

    def restart(self, settings: Autoscaling | None = None) -> None:
        """New settings, or a count set by hand: the streak starts over."""
        if settings is not None:
            self.settings = settings
        self._streak = None

    def status(self, desired: int) -> AutoscaleStatus:
        return AutoscaleStatus(
            model=self.model,
            settings=self.settings,
            desired=desired,
            load=self.load,
            wanted=self.wanted,
            ups=self.ups,
            downs=self.downs,
            last=f"paused: {self.paused}" if self.paused else self.last,
            last_at=self.last_at,
        )
