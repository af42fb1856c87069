"""The replica supervisor: a Ray actor on one node that runs and watches one vLLM rank.

It holds the devices Ray gave it (GPUs, or CPU cores on a CPU node) for as long as the
rank lives, launches `vllm serve` as a child process, and on rank 0 decides readiness by
real one-token generations (periodic, jittered, with a strike count).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from pathlib import Path

import aiohttp
import psutil

from raylm.cluster.ports import free_port
from raylm.home import logs_dir
from raylm.kv.blocks import BlockDelta
from raylm.kv.endpoints import event_dir
from raylm.kv.subscriber import EventSubscriber
from raylm.replica import ReplicaState
from raylm.serve import engine, replica_auth
from raylm.serve.fence import until_fenced
from raylm.serve.health import Judgement, Probing, ProgressWatch
from raylm.serve.probe import engine_load, generate_one_token, http_ok
from raylm.serve.process import EngineProcess
from raylm.serve.rank import RankNode, RankStarted, RankStatus

logger = logging.getLogger(__name__)


def iface_of(ip: str) -> str | None:
    """The network interface that holds `ip` on this node."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return str(name)
    return None


def host_id() -> str:
    """Identifies the kernel: Ray nodes in containers or namespaces of one host share it,
    and with it the physical cores, so CPU slots are counted per host, not per node."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


class ReplicaSupervisor:
    """Runs one rank of one replica. Created by the controller with Ray resources attached."""

    def __init__(
        self,
        replica_id: str,
        rank: int,
        *,
        deployment: str,
        probing: Probing,
        cpus: int = 0,
        api_key: str | None = None,
    ) -> None:
        import ray

        self.replica_id = replica_id
        self.rank = rank
        self.deployment = deployment
        self.node_ip = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.cpu_slot = 0
        self.cpus = cpus
        self.probing = probing
        self.api_key = api_key
        self.state = ReplicaState.PENDING
        self.detail = "waiting to launch"
        self.proc: EngineProcess | None = None
        self.launch_spec: engine.RankLaunch | None = None
        self.exit_code: int | None = None
        self._watch: asyncio.Task[None] | None = None
        self._fence: asyncio.Task[None] | None = None
        self._kv: EventSubscriber | None = None

    def node_info(self) -> RankNode:
        """Where this rank lives, so the controller can wire ranks together."""
        return RankNode(
            node_ip=self.node_ip, node_id=self.node_id, host_id=host_id(), pid=os.getpid()
        )

    def reserve_port(self, host: str | None = None) -> int:
        return free_port(host or self.node_ip)

    def _cpu_cores(self) -> list[int] | None:
        if self.cpus <= 0:
            return None
        # Ray reserves a count, not core ids: take this slot's share of the node's cores,
        # RAYLM_CPU_CORES (e.g. "2-3", set where nodes share a host) or our affinity set.
        cores = engine.parse_cores(os.environ.get("RAYLM_CPU_CORES", "")) or sorted(
            os.sched_getaffinity(0)
        )
        start = (self.cpu_slot * self.cpus) % len(cores)
        return [cores[(start + i) % len(cores)] for i in range(min(self.cpus, len(cores)))]

    async def launch(self, spec: engine.RankLaunch, cpu_slot: int = 0) -> RankStarted:
        """Start vLLM as `spec` says and begin watching it.

        `cpu_slot` numbers this rank among raylm's ranks on the node, to pick its cores.
        """
        self.cpu_slot = cpu_slot
        if spec.kv_events and self.rank == 0:
            # Subscribed before the engine starts, so no event is missed (raylm.kv).
            events_dir = event_dir()
            spec = spec.model_copy(update={"kv_events_dir": str(events_dir)})
            self._kv = EventSubscriber(events_dir)
            self._kv.start()
        self.launch_spec = spec
        iface = os.environ.get("GLOO_SOCKET_IFNAME") or iface_of(self.node_ip)
        env = engine.rank_env(spec, node_ip=self.node_ip, iface=iface, cpu_cores=self._cpu_cores())
        if spec.executor == "ray":
            import ray

            env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        if self.api_key:
            env[replica_auth.KEY_ENV] = self.api_key
        log_path = logs_dir() / self.deployment / f"{self.replica_id}-rank{self.rank}.log"
        self.proc = EngineProcess(engine.command(spec), env, log_path)
        self.state = ReplicaState.STARTING
        self.detail = "vLLM is loading"
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop())
        self._fence = asyncio.get_running_loop().create_task(self._stop_when_lost())
        return RankStarted(pid=self.proc.pid, log_path=str(log_path))

    async def _stop_when_lost(self) -> None:
        """Stop this rank's vLLM once its node has lost the cluster (serve/fence.py)."""
        why = await until_fenced(self.node_id)
        logger.warning("replica %s rank %d: %s; stopping its vLLM", self.replica_id, self.rank, why)
        await self.stop(grace_s=5.0)
        self._dead(f"stopped its vLLM: {why} (the controller replaces it elsewhere)")

    def status(self) -> RankStatus:
        return RankStatus(
            state=self.state,
            detail=self.detail,
            node_ip=self.node_ip,
            pid=self.proc.pid if self.proc else None,
            exit_code=self.exit_code,
            log_path=str(self.proc.log_path) if self.proc else "",
            log_tail=self.proc.tail() if self.proc and self.state is ReplicaState.DEAD else "",
        )

    async def requests_in_engine(self) -> int | None:
        """Requests rank 0's engine holds now (running and waiting); None when it cannot
        tell (not launched, or /metrics did not answer). A replica being drained is done
        when this is 0."""
        spec = self.launch_spec
        if spec is None or self.rank != 0:
            return None
        async with aiohttp.ClientSession() as session:
            base = f"http://{spec.host}:{spec.port}"
            load = await engine_load(session, base, self.probing.timeout_s, self.api_key)
        return None if load is None else load.in_engine

    def kv_delta(self, epoch: str | None, since: int) -> BlockDelta | None:
        """What changed in this replica's prefix cache since the reader's cursor (raylm.kv);
        None when the replica does not publish KV events."""
        return self._kv.delta(epoch, since) if self._kv else None

    def _dead(self, why: str) -> None:
        self.state = ReplicaState.DEAD
        self.detail = why
        logger.warning("replica %s rank %d dead: %s", self.replica_id, self.rank, why)

    async def _watch_loop(self) -> None:
        assert self.proc is not None and self.launch_spec is not None
        spec, p = self.launch_spec, self.probing
        base = f"http://{spec.host}:{spec.port}"
        async with aiohttp.ClientSession() as session:
            if self.rank == 0 and not await self._wait_ready(session, base, spec):
                return
            if self.rank > 0:
                self.state = ReplicaState.READY
                self.detail = "headless rank running"
            watch = ProgressWatch(p.progress_timeout_s)
            strikes = 0
            while True:
                jitter = random.uniform(0.8, 1.2)
                # Process exit is checked every second; health every interval.
                deadline = time.monotonic() + p.interval_s * jitter
                while time.monotonic() < deadline:
                    if (code := self.proc.poll()) is not None:
                        self.exit_code = code
                        self._dead(f"vLLM exited with code {code}")
                        return
                    await asyncio.sleep(1.0)
                if self.rank > 0:
                    continue  # rank 0's engine stalls when a headless rank hangs
                ok, why = await self._check(session, base, spec, watch)
                if ok:
                    strikes = 0
                    self.state, self.detail = ReplicaState.READY, why
                    continue
                strikes += 1
                if strikes >= p.strikes:
                    self._dead(f"{strikes} health checks in a row failed; last: {why}")
                    return
                self.state = ReplicaState.UNHEALTHY
                self.detail = f"health strike {strikes}/{p.strikes}: {why}"

    async def _check(
        self,
        session: aiohttp.ClientSession,
        base: str,
        spec: engine.RankLaunch,
        watch: ProgressWatch,
    ) -> tuple[bool, str]:
        """One health check (the rule is in raylm.serve.health): (healthy, what was seen)."""
        p = self.probing
        if not await http_ok(session, f"{base}/health", p.timeout_s):
            return False, f"vLLM's /health did not answer 200 within {p.timeout_s:g} s"
        load = await engine_load(session, base, p.timeout_s, self.api_key)
        if load is None:
            return False, f"vLLM's /metrics did not answer within {p.timeout_s:g} s"
        now = time.monotonic()
        judged = watch.judge(load, now)
        if judged is Judgement.BUSY:
            return True, f"busy ({load.running} running, {load.waiting} waiting), making progress"
        if judged is Judgement.STALLED:
            return False, (
                f"{load.in_engine} request(s) in the engine and no progress for "
                f"{watch.stalled_for(now):.0f} s"
            )
        ok, why = await generate_one_token(
            session, base, spec.served_model_name, p.timeout_s, self.api_key
        )
        if ok:
            return True, "idle; a probe generated a token"
        # Requests that arrived meanwhile may have queued the probe behind them: busy.
        after = await engine_load(session, base, p.timeout_s, self.api_key)
        if after is not None and after.in_engine and after.progress != load.progress:
            watch.judge(after, time.monotonic())
            return True, f"busy ({after.running} running, {after.waiting} waiting), making progress"
        return False, why

    async def _wait_ready(
        self, session: aiohttp.ClientSession, base: str, spec: engine.RankLaunch
    ) -> bool:
        assert self.proc is not None
        p = self.probing
        deadline = time.monotonic() + p.startup_timeout_s
        while time.monotonic() < deadline:
            if (code := self.proc.poll()) is not None:
                self.exit_code = code
                self._dead(f"vLLM exited with code {code} while starting")
                return False
            if await http_ok(session, f"{base}/health", 5.0):
                # The first generation also warms the engine up: give it longer.
                ok, why = await generate_one_token(
                    session, base, spec.served_model_name, max(p.timeout_s, 120.0), self.api_key
                )
                if ok:
                    self.state, self.detail = ReplicaState.READY, "first generation succeeded"
                    return True
                self.detail = f"up, but {why}"
            await asyncio.sleep(1.0)
        self._dead(f"not ready within {p.startup_timeout_s:.0f} s")
        return False

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop the vLLM process group; safe to call twice."""
        self.state = ReplicaState.STOPPING
        if self._watch:
            self._watch.cancel()
        if self._fence and self._fence is not asyncio.current_task():
            self._fence.cancel()
        if self.proc:
            await asyncio.get_running_loop().run_in_executor(None, self.proc.stop, grace_s)
        if self._kv:
            self._kv.close()
            self._kv = None
        self.detail = "stopped"
