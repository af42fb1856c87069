"""Autoscaling, as the controller's own methods (a mixin of serve/controller.py): the
gateways' load reports, each autoscaled model's rule (serve/autoscaler.py) asked once a
reconcile pass, and `raylm autoscale` changing a model's settings live.

The load is summed over the gateway processes that reported within `LOAD_FRESH_S`; with
none, nothing is decided (a gateway that stopped reporting is not an idle model). A
scale-up takes what the cluster has room for (the same check as `raylm scale`), and a
scale-down drains first (Operating._retire). Nothing is decided during a rolling update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from raylm.autoscaling import AutoscaleStatus, Autoscaling, LoadReport
from raylm.operations import ScaleResult
from raylm.serve.autoscaler import Autoscaler
from raylm.serve.deployment import DeploymentConfig

logger = logging.getLogger(__name__)

LOAD_FRESH_S = 5.0
"""A gateway's report counts this long (they report every refresh, 0.5 s)."""


class Scaling:
    """The controller's autoscalers; needs its desired counts, scale and room check."""

    _autoscalers: dict[str, Autoscaler]
    _loads: dict[str, tuple[float, dict[str, int]]]
    _desired: dict[str, int]
    _current: dict[str, DeploymentConfig]
    _rollouts: dict[str, str]

    # The controller's own (serve/operating.py).
    _scale: Callable[[str, int], Awaitable[ScaleResult]]
    _room_for: Callable[[DeploymentConfig, int], bool]
    _unknown: Callable[[str], str]

    def report_load(self, report: LoadReport) -> list[AutoscaleStatus]:
        """A gateway's load; answers every autoscaled model's status (for its /metrics)."""
        now = time.monotonic()
        self._loads[report.gateway] = (now, dict(report.load))
        for gateway, (at, _) in list(self._loads.items()):
            if now - at > 60 * LOAD_FRESH_S:
                del self._loads[gateway]  # a gateway long gone
        return [a.status(self._desired.get(m, 0)) for m, a in self._autoscalers.items()]

    def _hand_scale_refusal(self, model: str, replicas: int) -> str | None:
        """Why `raylm scale` may not set `replicas` (outside the model's autoscaling
        bounds), or None; within them, the rule starts over from the new count."""
        scaler = self._autoscalers.get(model)
        if scaler is None:
            return None
        s = scaler.settings
        if replicas != s.bounded(replicas):
            return (
                f"`{model}` autoscales between {s.min_replicas} and {s.max_replicas} "
                f"replicas; scale it within them, or change them with `raylm autoscale "
                f"{model} --min N --max M` (or `--off`)."
            )
        scaler.restart()
        return None

    async def set_autoscaling(self, model: str, settings: Autoscaling | None) -> ScaleResult:
        """Autoscale `model` with `settings` from now on (None: stop; its count stays). A
        count outside the new bounds moves inside them at once."""
        if model not in self._current:
            return ScaleResult(
                model=model, before=0, after=0, error=self._unknown(model), status=404
            )
        before = self._desired[model]
        if settings is None:
            self._autoscalers.pop(model, None)
            logger.info("%s: autoscaling off, %d replica(s)", model, before)
            return ScaleResult(model=model, before=before, after=before)
        scaler = self._autoscalers.get(model)
        if scaler is None:
            scaler = self._autoscalers[model] = Autoscaler(model, settings)
        scaler.restart(settings)
        logger.info("%s: autoscaling %s", model, settings.describe())
        inside = settings.bounded(before)
        if inside == before:
            return ScaleResult(model=model, before=before, after=before)
        result = await self._scale(model, inside)
        scaler.decided(before, result.after, "outside the new bounds")
        return result

    async def _autoscale(self, now: float) -> None:
        """One pass of every autoscaled model's rule (from the reconcile loop)."""
        fresh = [load for at, load in self._loads.values() if now - at <= LOAD_FRESH_S]
        for model, scaler in list(self._autoscalers.items()):
            if model not in self._current:
                continue  # being removed
            if self._rollouts.get(model, "").startswith("rolling"):
                scaler.pause("a rolling update is in progress")
                continue
            if not fresh:
                scaler.pause(f"no gateway reported its load in the last {LOAD_FRESH_S:g} s")
                continue
            desired = self._desired[model]
            want = scaler.observe(now, float(sum(x.get(model, 0) for x in fresh)), desired)
            if want is None:
                continue
            why = scaler.why(desired)
            if want > desired:
                room = want - desired
                while room and not self._room_for(self._current[model], room):
                    room -= 1
                if room < want - desired:
                    why += f"; wanted {want}, the cluster has room for {room} more"
                want = desired + room
            if want == desired:
                scaler.decided(desired, desired, why)
                continue
            result = await self._scale(model, want)
            if result.error:
                why += f"; refused: {result.error}"
            scaler.decided(desired, result.after, why)
            logger.info("autoscaling %s: %s", model, scaler.last)
