"""What operators change on a running deployment, as the controller's own methods (a
mixin of serve/controller.py): its view (`raylm ps`), a model's replica count
(`raylm scale`) and a rolling update to a new version (`raylm update`).

A removed replica is drained (serve/drain.py): it stops being ready at once, and is
stopped once every gateway has seen that and has no request open to it (up to
drain_timeout_s). A rolling update starts new replicas `max_surge` at a time and,
as each is proven ready, drains an old one; with `max_unavailable` old ones also go first.
A new replica that fails to start `FAILED_STARTS` times stops the rollout: the new ones
are removed and the old ones, never drained before a new one was ready, keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from raylm.cluster.nodes import NodeView, alive_nodes
from raylm.operations import (
    DeploymentView,
    ModelView,
    ScaleResult,
    UpdateRequest,
    UpdateResult,
    pick_to_retire,
)
from raylm.replica import ReplicaState
from raylm.serve.autoscaler import Autoscaler
from raylm.serve.deployment import DeploymentConfig
from raylm.serve.drain import wait_drained
from raylm.serve.placement import pick_node
from raylm.serve.replica_slot import Replica, add_need, need_text, rank_need, replica_info

logger = logging.getLogger(__name__)

FAILED_STARTS = 3
"""Failed starts of a new replica, never ready, that stop a rollout."""


class Operating:
    """Scale and update; needs the controller's replicas, configs and teardown."""

    configs: list[DeploymentConfig]
    replicas: list[Replica]
    _desired: dict[str, int]
    _current: dict[str, DeploymentConfig]
    _rollouts: dict[str, str]
    _next_index: dict[str, int]
    _tasks: set[asyncio.Task[None]]
    _autoscalers: dict[str, Autoscaler]

    # The controller's own (serve/controller.py): placement and stopping stay there; and
    # autoscaling's (serve/scaling.py).
    _teardown: Callable[[Replica, str], Awaitable[None]]
    _used_by_others: Callable[[DeploymentConfig], dict[str, dict[str, float]]]
    _hand_scale_refusal: Callable[[str, int], str | None]
    _room_kept: Callable[[], dict[str, dict[str, float]]]
    _still_routed: Callable[[str], tuple[int, int, int] | None]

    # ---- views ----

    def _of(self, model: str) -> list[Replica]:
        return [r for r in self.replicas if r.config.served_model_name == model and not r.retiring]

    def deployment(self) -> DeploymentView:
        """The models, their desired replica counts and their replicas (`raylm ps`)."""
        models = []
        for first in self.configs:
            name = first.served_model_name
            c = self._current.get(name, first)  # not current: being removed
            mine = [r for r in self.replicas if r.config.served_model_name == name]
            scaler = self._autoscalers.get(name)
            models.append(
                ModelView(
                    name=name,
                    model_path=c.model_path,
                    desired=self._desired.get(name, 0),
                    version=c.version,
                    rollout=self._rollouts.get(name, ""),
                    tensor_parallel_size=c.tensor_parallel_size,
                    pipeline_parallel_size=c.pipeline_parallel_size,
                    replicas=[replica_info(r) for r in mine],
                    versions={r.replica_id: r.config.version for r in mine},
                    autoscale=scaler.status(self._desired.get(name, 0)) if scaler else None,
                )
            )
        return DeploymentView(name=self.configs[0].name, models=models)

    # ---- scale ----

    async def scale(self, model: str, replicas: int) -> ScaleResult:
        """Keep `replicas` replicas of `model` (`raylm scale`): new ones start (refused
        when the cluster has no room for them); removed ones are drained, then stopped."""
        if model in self._current and (why := self._hand_scale_refusal(model, replicas)):
            before = self._desired[model]
            return ScaleResult(model=model, before=before, after=before, error=why, status=409)
        result = await self._scale(model, replicas)
        if not result.error and (scaler := self._autoscalers.get(model)):
            scaler.restart()  # the autoscaler starts over from the count set by hand
        return result

    async def _scale(self, model: str, replicas: int) -> ScaleResult:
        config = self._current.get(model)
        if config is None:
            return ScaleResult(
                model=model, before=0, after=0, error=self._unknown(model), status=404
            )
        before = self._desired[model]
        result = ScaleResult(model=model, before=before, after=replicas)
        if self._rollouts.get(model, "").startswith("rolling"):
            result.after, result.status = before, 409
            result.error = f"`{model}` is being updated; scale it once the rollout is done."
            return result
        mine = self._of(model)
        if replicas > len(mine):
            more = replicas - len(mine)
            if not self._room_for(config, more):
                result.after, result.status = before, 409
                result.error = (
                    f"The cluster has no room for {more} more replica(s) of `{model}` "
                    f"({need_text(config)} each); free devices or add nodes first."
                )
                return result
            result.added = [r.replica_id for r in self._add(config, more)]
        elif replicas < len(mine):
            rows = [(r.replica_id, r.state, r.index) for r in mine]
            for rid in pick_to_retire(rows, len(mine) - replicas):
                self._start_retiring(next(x for x in mine if x.replica_id == rid))
                result.draining.append(rid)
        self._desired[model] = replicas
        logger.info("scaled %s from %d to %d replica(s)", model, before, replicas)
        return result

    def _add(self, config: DeploymentConfig, count: int) -> list[Replica]:
        # Never an id used before: gateways key what they know of a replica's cache by it.
        name = config.served_model_name
        first = self._next_index[name]
        self._next_index[name] = first + count
        added = [Replica(i, f"{name}-{i}", config) for i in range(first, first + count)]
        self.replicas.extend(added)  # the reconcile loop starts them
        return added

    def _start_retiring(self, r: Replica) -> asyncio.Task[None]:
        """`r`'s drain and stop, started once however many ask."""
        if r.retire_task is None:
            r.retiring = True
            r.retire_task = self._background(self._retire(r), f"retiring {r.replica_id}")
        return r.retire_task

    def _background(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """A task kept until it ends (asyncio holds tasks weakly), its failure logged."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error("%s failed", what, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def _retire(self, r: Replica) -> None:
        """Drain `r`, stop it, and drop it from the deployment."""
        if r.task is not None and not r.task.done():
            r.task.cancel()  # a start in progress: nothing to drain
        if r.state is ReplicaState.READY and r.supervisors:
            r.state, r.detail = ReplicaState.STOPPING, "draining: taking no new requests"
            if not await wait_drained(r, self._still_routed):
                logger.warning(
                    "%s: drain_timeout_s (%g s) ran out; stopping it (%s)",
                    r.replica_id,
                    r.config.drain_timeout_s,
                    r.detail,
                )
        try:
            await self._teardown(r, "removed")
        finally:
            if r in self.replicas:
                self.replicas.remove(r)

    def _room_for(self, c: DeploymentConfig, count: int) -> bool:
        """Whether `count` more one-node replicas of `c` fit beside every replica now."""
        if c.nodes_per_replica > 1:
            return True  # a placement group waits for its nodes; nothing to check here
        return len(self._more_nodes(c, count, alive_nodes(), {})) == count

    def _more_nodes(
        self,
        c: DeploymentConfig,
        count: int,
        nodes: list[NodeView],
        also: dict[str, dict[str, float]],
    ) -> list[str]:
        """The nodes (ids) up to `count` more one-node replicas of `c` would go to, as
        the controller places them, beside every replica now and what `also` holds (per
        node id); fewer when the cluster has no room for more."""
        placed = [x.node_ids for x in self.replicas if x.config is c]
        used = self._used_by_others(c)
        for node, res in also.items():
            add_need(used, node, res)
        picked: list[str] = []
        for _ in range(count):
            nid = pick_node(
                nodes, rank_need(c), placed, exclude=set(), allowed=c.allowed_node_ips, used=used
            )
            if nid is None:
                break
            placed.append([nid])
            picked.append(nid)
        return picked

    def _unknown(self, model: str) -> str:
        served = ", ".join(self._current)
        return f"No model `{model}` in this deployment (it serves {served})."

    # ---- models added and removed ----

    def held(self) -> dict[str, dict[str, float]]:
        """Per node IP, the resources every placed rank of the deployment holds, and the
        room autoscaled models keep for their max_replicas (what a model added now must
        leave free)."""
        held: dict[str, dict[str, float]] = {}
        for r in self.replicas:
            if r.supervisors:  # placed now (not torn down, waiting to restart)
                for ip in r.node_ips:
                    add_need(held, ip, rank_need(r.config))
        for ip, res in self._room_kept().items():
            add_need(held, ip, res)
        return held

    def add_model(self, config: DeploymentConfig) -> ScaleResult:
        """Serve one more model (planned by the caller on what `held` left free)."""
        name = config.served_model_name
        if any(c.served_model_name == name for c in self.configs):
            error = (
                f"`{name}` is already served (or still being removed); give the new model "
                "another served_model_name, or wait until `raylm ps` no longer lists it."
            )
            return ScaleResult(model=name, before=0, after=0, error=error, status=409)
        self.configs.append(config)
        self._current[name] = config
        self._desired[name] = config.replicas
        self._next_index.setdefault(name, 0)  # a model added again: ids go on, never reused
        if config.autoscaling is not None:
            self._autoscalers[name] = Autoscaler(name, config.autoscaling)
        added = self._add(config, config.replicas)
        logger.info("added %s (%d replica(s))", name, config.replicas)
        return ScaleResult(
            model=name, before=0, after=config.replicas, added=[r.replica_id for r in added]
        )

    async def remove_model(self, model: str) -> ScaleResult:
        """Stop serving `model`: its replicas are drained, then stopped."""
        if model not in self._current:
            return ScaleResult(
                model=model, before=0, after=0, error=self._unknown(model), status=404
            )
        if len(self._current) == 1:
            error = f"`{model}` is the deployment's only model: stop `raylm serve` instead."
            return ScaleResult(model=model, before=0, after=0, error=error, status=409)
        if self._rollouts.get(model, "").startswith("rolling"):
            error = f"`{model}` is being updated; remove it once the rollout is done."
            return ScaleResult(model=model, before=0, after=0, error=error, status=409)
        mine = self._of(model)
        result = ScaleResult(
            model=model, before=self._desired.pop(model), after=0,
            draining=[r.replica_id for r in mine],
        )  # fmt: skip
        self._current.pop(model)
        self._autoscalers.pop(model, None)
        self._rollouts[model] = "removing: draining its replicas"
        drains = [self._start_retiring(r) for r in mine]
        self._background(self._forget(model, drains), f"removing {model}")
        logger.info("removing %s", model)
        return result

    async def _forget(self, model: str, drains: list[asyncio.Task[None]]) -> None:
        """Drop `model` from the deployment once its replicas are gone."""
        await asyncio.gather(*drains, return_exceptions=True)
        self.configs = [c for c in self.configs if c.served_model_name != model]
        self._rollouts.pop(model, None)

    # ---- rolling update ----

    async def update(self, request: UpdateRequest) -> UpdateResult:
        """Start a rolling update of `request.model` to a new version (its model directory
        and/or engine arguments); `raylm ps` shows its progress."""
        model = request.model
        old = self._current.get(model)
        if old is None:
            return UpdateResult(model=model, version=0, error=self._unknown(model), status=404)
        if self._rollouts.get(model, "").startswith("rolling"):
            error = f"`{model}` is already being updated."
            return UpdateResult(model=model, version=old.version, error=error, status=409)
        seen = [r.config.version for r in self.replicas if r.config.served_model_name == model]
        version = max([old.version, *seen]) + 1
        change: dict[str, Any] = {
            "engine_args": {**old.engine_args, **request.engine_args},
            "version": version,
        }
        if request.model_path:
            change |= {"model_path": request.model_path, "node_model_paths": {}}
        new = old.model_copy(update=change)
        self._current[model] = new
        self._rollouts[model] = f"rolling to version {version}"
        self._background(self._roll(model, old, new, request), f"rolling {model}")
        return UpdateResult(model=model, version=version)

    async def _roll(
        self, model: str, old: DeploymentConfig, new: DeploymentConfig, request: UpdateRequest
    ) -> None:
        version = new.version
        try:
            while olds := [r for r in self._of(model) if r.config is not new]:
                # As many new replicas as fit, up to max_surge and the old ones left.
                surge = min(request.max_surge, len(olds))
                while surge and not self._room_for(new, surge):
                    surge -= 1
                unavailable = request.max_unavailable
                if unavailable is None:  # never below today's count, unless there is no room
                    unavailable = 0 if surge else 1
                if not surge and not unavailable:
                    raise _RolloutFailed(
                        "no room for a new replica beside the old ones, and max_unavailable "
                        "is 0: free devices, or allow --max-unavailable 1"
                    )
                drop = min(len(olds), unavailable)
                ranked = pick_to_retire([(r.replica_id, r.state, r.index) for r in olds], drop)
                first = [r for r in olds if r.replica_id in ranked]
                await asyncio.gather(*(self._start_retiring(r) for r in first))
                count = min(len(olds), len(first) + surge)
                fresh = self._add(new, count)
                starting = ", ".join(r.replica_id for r in fresh)
                state = f"rolling to version {version}: starting {starting}"
                if first:
                    drained = ", ".join(r.replica_id for r in first)
                    state += f" after draining {drained} (no room for one more replica)"
                    if not any(r.state is ReplicaState.READY for r in self._of(model)):
                        state += f"; `{model}` has no ready replica until it is up"
                self._rollouts[model] = state
                failed = await self._wait_ready(fresh)
                if failed is not None:
                    raise _RolloutFailed(failed)
                rest = [r for r in olds if r not in first][: count - len(first)]
                await asyncio.gather(*(self._start_retiring(r) for r in rest))
            self._rollouts[model] = f"updated to version {version}"
        except Exception as e:  # _RolloutFailed, or the cluster failing under it
            if not isinstance(e, _RolloutFailed):
                logger.exception("rollout of %s failed", model)
            logger.warning("rollout of %s stopped: %s", model, e)
            self._current[model] = old
            await self._roll_back(model, old, new)
            self._rollouts[model] = f"failed: version {version} stopped: {e}"

    async def _roll_back(self, model: str, old: DeploymentConfig, new: DeploymentConfig) -> None:
        """Back to `old` alone: new replicas that never got ready go at once; old ones
        come back for the rest, and the ready new ones serve until those are ready."""
        fresh = [r for r in self._of(model) if r.config is new]
        broken = [r for r in fresh if r.state is not ReplicaState.READY]
        await asyncio.gather(*(self._start_retiring(r) for r in broken))
        working = [r for r in fresh if r not in broken]
        missing = self._desired.get(model, 0) - (len(self._of(model)) - len(working))
        backs = self._add(old, max(0, missing))
        if backs and await self._wait_ready(backs) is not None:
            logger.warning("rollback of %s: an old replica is not ready yet", model)
        await asyncio.gather(*(self._start_retiring(r) for r in working))

    async def _wait_ready(self, fresh: list[Replica]) -> str | None:
        """Wait until every replica of `fresh` is ready; why one failed, if one did
        (`FAILED_STARTS` failed starts, or not ready within twice the startup timeout)."""
        limit = 2 * max(r.config.probing.startup_timeout_s for r in fresh)
        deadline = time.monotonic() + limit
        while True:
            for r in fresh:
                if not r.ever_ready and r.restarts >= FAILED_STARTS:
                    return f"{r.replica_id} failed to start {r.restarts} times: {r.detail}"
            if all(r.state is ReplicaState.READY for r in fresh):
                return None
            if time.monotonic() > deadline:
                late = [r for r in fresh if r.state is not ReplicaState.READY]
                return f"{late[0].replica_id} was not ready within {limit:.0f} s: {late[0].detail}"
            await asyncio.sleep(1.0)


class _RolloutFailed(Exception):
    """A new replica of a rollout never became ready."""
