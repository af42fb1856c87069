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
from raylm.cluster.nodes import NodeView, alive_nodes
from raylm.operations import ScaleResult
from raylm.serve.autoscaler import Autoscaler
from raylm.serve.deployment import DeploymentConfig
from raylm.serve.replica_slot import Replica, add_need, rank_need

logger = logging.getLogger(__name__)

LOAD_FRESH_S = 5.0
"""A gateway's report counts this long (they report every refresh, 0.5 s)."""


class Scaling:
    """The controller's autoscalers; needs its desired counts, scale and room check."""

    _autoscalers: dict[str, Autoscaler]
    _loads: dict[str, tuple[float, LoadReport]]
    _desired: dict[str, int]
    _current: dict[str, DeploymentConfig]
    _rollouts: dict[str, str]

    # The controller's own (serve/operating.py, serve/controller.py).
    _of: Callable[[str], list[Replica]]
    _more_nodes: Callable[
        [DeploymentConfig, int, list[NodeView], dict[str, dict[str, float]]], list[str]
    ]
    _scale: Callable[[str, int], Awaitable[ScaleResult]]
    _room_for: Callable[[DeploymentConfig, int], bool]
    _unknown: Callable[[str], str]

    def report_load(self, report: LoadReport) -> list[AutoscaleStatus]:
        """A gateway's load; answers every autoscaled model's status (for its /metrics)."""
        now = time.monotonic()
        self._loads[report.gateway] = (now, report)
        for gateway, (at, _) in list(self._loads.items()):
            if now - at > 60 * LOAD_FRESH_S:
                del self._loads[gateway]  # a gateway long gone
        return [a.status(self._desired.get(m, 0)) for m, a in self._autoscalers.items()]

    def gateway_seen(self) -> float | None:
        """Seconds since a gateway last reported its load (None: none ever did): whether
        the deployment's raylm serve still runs (`raylm serve --attach` asks)."""
        if not self._loads:
            return None
        return time.monotonic() - max(at for at, _ in self._loads.values())

    def _still_routed(self, replica_id: str) -> tuple[int, int, int] | None:
        """What keeps `replica_id`'s drain going, from the gateways' reports: how many
        reporting now have not yet seen it stopping, the requests they still have open to
        it, and how many reported within the last minute but not now (one that cannot
        reach the controller may still route to it); None when none reports now. The
        gateways are done with it at (0, 0, 0)."""
        now = time.monotonic()
        fresh = [r for at, r in self._loads.values() if now - at <= LOAD_FRESH_S]
        if not fresh:
            return None
        stale = sum(LOAD_FRESH_S < now - at <= 60.0 for at, _ in self._loads.values())
        unaware = sum(replica_id not in r.draining for r in fresh)
        return unaware, sum(r.draining.get(replica_id, 0) for r in fresh), stale

    def _hand_scale_refusal(self, model: str, replicas: int) -> str | None:
        """Why `raylm scale` may not set `replicas` (outside the model's autoscaling
        bounds), or None. Within them the rule starts over from the new count, and moves
        it again once the load has wanted another for the delay."""
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
        return None

    def _room_kept(self) -> dict[str, dict[str, float]]:
        """Per node IP, the room autoscaled models keep for the replicas they may add up
        to max_replicas, placed as the controller would place them (one-node replicas;
        a placement group's nodes are not modelled)."""
        nodes = alive_nodes()
        ips = {n.node_id: n.ip for n in nodes}
        kept: dict[str, dict[str, float]] = {}  # per node id
        for model, scaler in self._autoscalers.items():
            c = self._current[model]
            if c.nodes_per_replica > 1:
                continue
            more = scaler.settings.max_replicas - len(self._of(model))
            for nid in self._more_nodes(c, more, nodes, kept):
                add_need(kept, nid, rank_need(c))
        return {ips[nid]: res for nid, res in kept.items()}

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
        inside = settings.bounded(before)
        if inside != before:  # the count moves first: a refusal leaves everything as it was
            result = await self._scale(model, inside)
            if result.error:
                result.error = f"{result.error} (its autoscaling is unchanged)"
                return result
        else:
            result = ScaleResult(model=model, before=before, after=before)
        scaler = self._autoscalers.get(model)
        if scaler is None:
            scaler = self._autoscalers[model] = Autoscaler(model, settings)
        scaler.restart(settings)
        if inside != before:
            scaler.decided(before, inside, "outside the new bounds")
        logger.info("%s: autoscaling %s", model, settings.describe())
        return result

    async def _autoscale(self, now: float) -> None:
        """One pass of every autoscaled model's rule (from the reconcile loop)."""
        fresh = [r.load for at, r in self._loads.values() if now - at <= LOAD_FRESH_S]
        for model, scaler in list(self._autoscalers.items()):
            try:
                await self._autoscale_one(model, scaler, now, fresh)
            except Exception:  # one model's failure must not stop the others' scaling
                logger.exception("autoscaling %s failed", model)

    async def _autoscale_one(
        self, model: str, scaler: Autoscaler, now: float, fresh: list[dict[str, int]]
    ) -> None:
        """One model's pass: a decision acted on, or why none."""
        if model not in self._current:
            return  # being removed
        if self._rollouts.get(model, "").startswith("rolling"):
            scaler.pause("a rolling update is in progress")
            return
        if not fresh:
            scaler.pause(f"no gateway reported its load in the last {LOAD_FRESH_S:g} s")
            return
        desired = self._desired[model]
        want = scaler.observe(now, float(sum(x.get(model, 0) for x in fresh)), desired)
        if want is None:
            return
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
            return
        result = await self._scale(model, want)
        if result.error:
            why += f"; refused: {result.error}"
        scaler.decided(desired, result.after, why)
        logger.info("autoscaling %s: %s", model, scaler.last)
