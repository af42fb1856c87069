"""The controller: a detached, named Ray actor that holds the desired replicas and reconciles.

Each replica is one or more supervisors (one per node it spans). The controller places
them (replicas on distinct nodes where possible; one placement group over the nodes of a
replica that spans several), wires rank 0's address into the others, watches every rank,
and tears a replica down whole and recreates it with backoff when any rank dies or hangs,
or its node leaves the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from raylm.autoscaling import LoadReport
from raylm.cluster.inventory import NodeInventory
from raylm.cluster.nodes import alive_nodes
from raylm.errors import exception_line
from raylm.kv.blocks import BlockCursor, BlockDelta
from raylm.replica import ReplicaInfo, ReplicaState
from raylm.serve.autoscaler import Autoscaler
from raylm.serve.deployment import DeploymentConfig
from raylm.serve.node_facts import NodeFacts
from raylm.serve.operating import Operating
from raylm.serve.placement import pick_node
from raylm.serve.rank import RankNode, RankStarted, RankStatus
from raylm.serve.replica_slot import (
    Replica,
    add_need,
    call_all,
    need_text,
    rank_need,
    replica_info,
    stop_all,
)
from raylm.serve.scaling import Scaling
from raylm.serve.supervisor import ReplicaSupervisor

logger = logging.getLogger(__name__)

_STATUS_TIMEOUT_S = 10.0
_PLACE_TIMEOUT_S = 60.0
# How long a node whose ranks stopped answering is kept out of placement.
_SUSPECT_S = 120.0


class Controller(Operating, Scaling):
    """Reconciles the replicas of a deployment's models (`configs`, one per model, all of
    one deployment name). Run as a detached named actor."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.configs = [DeploymentConfig(**c) for c in configs]
        self.replicas = [
            Replica(i, f"{c.served_model_name}-{i}", c)
            for c in self.configs
            for i in range(c.replicas)
        ]
        self._slots: dict[str, set[int]] = {}
        self._suspects: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="raylm-ctl")
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._desired = {c.served_model_name: c.replicas for c in self.configs}
        self._current = {c.served_model_name: c for c in self.configs}
        """Per model, the config (version) its new replicas start with."""
        self._rollouts: dict[str, str] = {}
        self._next_index = {c.served_model_name: c.replicas for c in self.configs}
        self._tasks: set[asyncio.Task[None]] = set()
        self._autoscalers = {
            c.served_model_name: Autoscaler(c.served_model_name, c.autoscaling)
            for c in self.configs
            if c.autoscaling is not None
        }
        self._node_facts = NodeFacts()
        self._loads: dict[str, tuple[float, LoadReport]] = {}
        """Per gateway process, when it last reported and its report."""

    # ---- public methods (called by the driver and the gateway) ----

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._reconcile_forever())

    def ping(self) -> str:
        return "ok"

    def current_configs(self) -> list[DeploymentConfig]:
        """Each model as it is to run now: its current version and desired count (what
        `raylm serve --attach` serves again)."""
        live = {m: a.settings for m, a in self._autoscalers.items()}
        return [
            c.model_copy(update={"replicas": self._desired[name], "autoscaling": live.get(name)})
            for name, c in self._current.items()
        ]

    def replica_infos(self) -> list[ReplicaInfo]:
        return [replica_info(r) for r in self.replicas]

    async def nodes(self) -> list[NodeInventory]:
        """Every node as `raylm status` shows it (the dashboard's; serve/node_facts.py)."""
        return await self._node_facts.get()

    async def kv_deltas(self, cursors: dict[str, BlockCursor]) -> dict[str, BlockDelta]:
        """Each ready replica's prefix-cache changes since the gateway's cursor (raylm.kv);
        replicas that do not answer within a second are left out this time."""
        ready = [r for r in self.replicas if r.state is ReplicaState.READY and r.supervisors]

        async def one(r: Replica) -> tuple[str, BlockDelta | None]:
            c = cursors.get(r.replica_id) or BlockCursor()
            try:
                got = await asyncio.wait_for(r.supervisors[0].kv_delta.remote(c.epoch, c.seq), 1.0)
            except (TimeoutError, ray.exceptions.RayError):
                return r.replica_id, None
            return r.replica_id, got

        answers = await asyncio.gather(*(one(r) for r in ready))
        return {rid: d for rid, d in answers if d is not None}

    async def shutdown(self) -> None:
        """Stop every replica (their vLLM process groups) and the reconcile loop."""
        self._stopping = True
        if self._loop_task:
            self._loop_task.cancel()
        for r in self.replicas:
            if r.task:
                r.task.cancel()
        await asyncio.gather(*(self._teardown(r, "deployment stopped") for r in self.replicas))

    # ---- reconciliation ----

    async def _reconcile_forever(self) -> None:
        while not self._stopping:
            try:
                await self._reconcile_once()
            except Exception:
                logger.exception("reconcile pass failed")
            await asyncio.sleep(1.0)

    async def _reconcile_once(self) -> None:
        now = time.monotonic()
        live = [
            r
            for r in self.replicas
            if r.supervisors and not r.retiring and (r.task is None or r.task.done())
        ]
        await asyncio.gather(*(self._check(r) for r in live))
        for r in self.replicas:
            idle = not r.supervisors and not r.retiring and (r.task is None or r.task.done())
            if idle and now >= r.not_before:
                r.task = asyncio.get_running_loop().create_task(self._start(r))
        if self._autoscalers:
            await self._autoscale(now)

    async def _off_loop(self, fn: Any, *args: Any, timeout: float) -> Any:
        # Calls to actors on a node cut off the network can block the caller, so they run
        # in a thread: the reconcile loop and replica_infos() must never stall.
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._pool, fn, *args), timeout)

    async def _check(self, r: Replica) -> None:
        try:
            statuses: list[RankStatus] = await self._off_loop(
                call_all, r.supervisors, "status", _STATUS_TIMEOUT_S, timeout=_STATUS_TIMEOUT_S + 2
            )
            if r.retiring:
                return  # a drain began meanwhile: it owns the state (never ready again)
        except (TimeoutError, ray.exceptions.GetTimeoutError):
            if r.retiring:
                return
            # A node cut off the network answers nothing; give it one more pass.
            r.missed_status += 1
            logger.warning("replica %s: no status within %.0f s", r.replica_id, _STATUS_TIMEOUT_S)
            if r.missed_status >= 2:
                # Until Ray declares the node dead (~60 s), it still looks alive: avoid it.
                until = time.monotonic() + _SUSPECT_S
                self._suspects.update(dict.fromkeys(r.node_ids, until))
                await self._fail(r, "a rank stopped answering (node unreachable?)")
            return
        except ray.exceptions.RayError as e:
            if not r.retiring:
                await self._fail(r, f"a rank was lost: {type(e).__name__}")
            return
        r.missed_status = 0
        dead = [s for s in statuses if s.state is ReplicaState.DEAD]
        if dead:
            await self._fail(r, f"rank on {dead[0].node_ip}: {dead[0].detail}")
            return
        r.state, r.detail = statuses[0].state, statuses[0].detail
        if r.state is ReplicaState.READY:
            r.failures = 0
            r.ever_ready = True

    async def _fail(self, r: Replica, why: str) -> None:
        logger.warning("replica %s failed: %s; restarting", r.replica_id, why)
        await self._teardown(r, why)
        r.state = ReplicaState.DEAD
        r.detail = why
        r.restarts += 1
        r.failures += 1
        delay = min(r.config.max_backoff_s, 2.0 ** (r.failures - 1))
        r.not_before = time.monotonic() + delay

    async def _teardown(self, r: Replica, why: str) -> None:
        sups, r.supervisors = r.supervisors, []
        if sups:
            r.state = ReplicaState.STOPPING
            try:
                await self._off_loop(stop_all, sups, timeout=45.0)
            except (TimeoutError, ray.exceptions.RayError):
                logger.warning("replica %s: some ranks did not stop in time", r.replica_id)
        if r.pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(r.pg)
            r.pg = None
        for host, slot in r.slots:
            self._slots.get(host, set()).discard(slot)
        r.slots = []
        r.node_ids = []
        r.url = ""
        r.detail = why

    # ---- placement and launch ----

    def _pick_node(self, r: Replica, exclude: set[str]) -> str | None:
        c = r.config
        placed = [x.node_ids for x in self.replicas if x.config is c]
        allowed = c.allowed_node_ips
        used = self._used_by_others(c)
        return pick_node(
            alive_nodes(), rank_need(c), placed, exclude=exclude, allowed=allowed, used=used
        )

    def _used_by_others(self, c: DeploymentConfig) -> dict[str, dict[str, float]]:
        """Per node id, what the ranks of the deployment's other models hold there."""
        used: dict[str, dict[str, float]] = {}
        for x in self.replicas:
            if x.config is not c:
                for nid in x.node_ids:
                    add_need(used, nid, rank_need(x.config))
        return used

    def _alloc_slot(self, host: str) -> int:
        used = self._slots.setdefault(host, set())
        slot = next(i for i in range(len(used) + 1) if i not in used)
        used.add(slot)
        return slot

    def _supervisor(self, r: Replica, rank: int, strategy: Any) -> Any:
        c = r.config
        need = rank_need(c)
        actor = ray.remote(ReplicaSupervisor).options(
            num_cpus=need.get("CPU", 0.0),
            num_gpus=need.get("GPU", 0.0),
            scheduling_strategy=strategy,
            max_restarts=0,
            name=None,
        )
        return actor.remote(
            r.replica_id,
            rank,
            deployment=c.name,
            cpus=int(need.get("CPU", 0)),
            probing=c.probing,
            api_key=c.replica_api_key.get_secret_value() if c.replica_api_key else None,
        )

    async def _place(self, r: Replica) -> bool:
        c = r.config
        if c.nodes_per_replica == 1:
            now = time.monotonic()
            suspects = {nid for nid, until in self._suspects.items() if until > now}
            node_id = self._pick_node(r, exclude=suspects)
            if node_id is None:
                r.detail = f"waiting for a node with {need_text(c)} free"
                return False
            strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
            r.supervisors = [self._supervisor(r, 0, strategy)]
            r.node_ids = [node_id]
            return True
        bundles = [rank_need(c) for _ in range(c.nodes_per_replica)]
        pg = placement_group(
            bundles, strategy="STRICT_SPREAD", name=f"{r.replica_id}-{r.generation}"
        )
        try:
            await asyncio.wait_for(pg.ready(), _PLACE_TIMEOUT_S)
        except (TimeoutError, ray.exceptions.RayError):
            remove_placement_group(pg)
            r.detail = f"waiting for nodes with {need_text(c)} free"
            return False
        except BaseException:  # cancelled (the replica retired): its devices go back
            remove_placement_group(pg)
            raise
        r.pg = pg
        r.supervisors = [
            self._supervisor(
                r, i, PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
            )
            for i in range(c.nodes_per_replica)
        ]
        return True

    async def _start(self, r: Replica) -> None:
        c = r.config
        r.generation += 1
        r.state, r.detail = ReplicaState.PENDING, "placing"
        try:
            if not await self._place(r):
                r.supervisors = []
                r.not_before = time.monotonic() + 5.0
                return
            infos: list[RankNode] = await asyncio.wait_for(
                asyncio.gather(*(s.node_info.remote() for s in r.supervisors)), _PLACE_TIMEOUT_S
            )
            r.node_ids = [i.node_id for i in infos]
            r.node_ips = [i.node_ip for i in infos]
            allowed = c.allowed_node_ips
            if allowed is not None and (bad := [ip for ip in r.node_ips if ip not in allowed]):
                raise RuntimeError(f"placed on {', '.join(bad)}, which has no verified model copy")
            r.slots = [(i.host_id, self._alloc_slot(i.host_id)) for i in infos]
            head = r.supervisors[0]
            port = await head.reserve_port.remote(c.bind_host)
            master_port = await head.reserve_port.remote(None) if c.nodes_per_replica > 1 else None
            launches = []
            for rank, sup in enumerate(r.supervisors):
                spec = c.rank_launch(
                    rank,
                    node_ip=r.node_ips[rank],
                    host=c.bind_host or r.node_ips[0],
                    port=port,
                    master_addr=r.node_ips[0],
                    master_port=master_port,
                )
                launches.append(sup.launch.remote(spec, r.slots[rank][1]))
            results: list[RankStarted] = await asyncio.gather(*launches)
            r.url = f"http://{c.bind_host or r.node_ips[0]}:{port}"
            r.log_path = results[0].log_path
            r.state, r.detail = ReplicaState.STARTING, "vLLM is loading"
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.warning("replica %s could not start: %s", r.replica_id, e)
            await self._fail(r, f"could not start: {exception_line(e)}")
