"""`raylm serve` end to end: model, cluster, layout, controller, gateway, drain and stop.

The CLI hands in a spec and a Reporter (it prints); serve/planning.py turns the spec, the
model and the live cluster into a deployment; starting, watching and stopping it happen here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from raylm.cluster.context import connect
from raylm.config import ServeSpec, check_served_names
from raylm.errors import ConfigError, ReplicaError
from raylm.gateway import GatewayServer, GatewaySettings, create_gateway
from raylm.gateway.heap import settle_heap
from raylm.gateway.server import bind_socket
from raylm.gateway.workers import default_workers
from raylm.models.store import ModelStore
from raylm.replica import ReplicaInfo, ReplicaState
from raylm.serve.deployment import (
    CONTROLLER_NAMESPACE,
    DeploymentConfig,
    controller_actor_name,
)
from raylm.serve.operator import DeploymentOperator
from raylm.serve.placement import Placement
from raylm.serve.planning import check_model_layout
from raylm.serve.scaling import LOAD_FRESH_S
from raylm.serve.together import Planned, plan_together

logger = logging.getLogger(__name__)

# A replica that fails this many starts before it was ever ready is a configuration
# problem (bad model, bad engine argument), not a transient one: stop and say so.
_MAX_FAILED_STARTS = 3


class Reporter(Protocol):
    """What the runner tells whoever started it (the CLI prints these)."""

    def phase(self, text: str) -> None: ...

    def replicas(self, infos: list[ReplicaInfo]) -> None: ...

    def ready(
        self, endpoint: str, models: list[tuple[str, Placement]], api_key_set: bool
    ) -> None: ...

    def stopping(self, text: str) -> None: ...


def check_port_free(host: str, port: int) -> None:
    """Fail fast, before anything loads, when the gateway's port is taken."""
    bind_socket(host, port).close()


def check_not_running(name: str) -> None:
    """Refuse, before planning, a deployment whose name already runs on this cluster (a
    controller that no longer answers is removed)."""
    import ray  # function-local: Ray reads its auth settings at import

    try:
        old = ray.get_actor(controller_actor_name(name), namespace=CONTROLLER_NAMESPACE)
    except ValueError:
        return
    try:
        ray.get(old.ping.remote(), timeout=5)
    except Exception:
        ray.kill(old)
        return
    raise ConfigError(
        f"A deployment named '{name}' already runs on this cluster",
        fix="Give this one another name, or stop the raylm serve that runs it; if that "
        "process died, serve its gateway again with --attach (its replicas are kept)",
        command=f"raylm serve --name {name} --attach",
    )


def start_controller(configs: list[DeploymentConfig]) -> Any:
    """Create the detached controller actor of the deployment's models (one name, one
    controller); check_not_running ran first."""
    config = configs[0]
    # Function-local: Ray (and the controller, which imports it) read their auth settings
    # at import, after `connect` has applied this cluster's token.
    import ray

    here = ray.get_runtime_context().get_node_id()
    try:
        return _create_controller(configs, here)
    except ValueError:  # another raylm serve created it since check_not_running
        raise ConfigError(
            f"A deployment named '{config.name}' was started on this cluster meanwhile",
            fix="Give this one another name",
            command=f"raylm serve --name {config.name}-2",
        ) from None


def _create_controller(configs: list[DeploymentConfig], here: str) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raylm.serve.controller import Controller

    config = configs[0]
    actor = (
        ray.remote(Controller)
        .options(
            name=config.controller_name,
            namespace=CONTROLLER_NAMESPACE,
            lifetime="detached",
            num_cpus=0,
            max_restarts=0,
            # Hard affinity: the controller shares the fate of the node running `raylm
            # serve` (and its gateway), never of a worker that may be lost or cut off.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
        )
        .remote([c.model_dump() for c in configs])
    )
    ray.get(actor.start.remote())
    return actor


def attach_controller(name: str) -> tuple[Any, Planned]:
    """The running controller of deployment `name` and its models as it holds them now
    (replica counts, versions, models added or removed live): what `raylm serve --attach`
    serves again after the raylm serve that started it was killed."""
    import ray  # function-local: Ray reads its auth settings at import

    try:
        actor = ray.get_actor(controller_actor_name(name), namespace=CONTROLLER_NAMESPACE)
        configs: list[DeploymentConfig] = ray.get(actor.current_configs.remote(), timeout=30)
        seen = _last_gateway_report(actor)
    except (ValueError, ray.exceptions.RayError) as e:
        raise ConfigError(
            f"No deployment named '{name}' runs on this cluster",
            why=f"its controller did not answer ({type(e).__name__})",
            fix="Start it: the same raylm serve line without --attach",
            command=f"raylm serve --name {name}",
        ) from None
    if seen is not None and seen < LOAD_FRESH_S:
        raise ConfigError(
            f"The deployment '{name}' still has a gateway",
            why=f"one reported its load {seen:.0f} s ago: its raylm serve still runs",
            fix="Use that gateway's endpoint; --attach is for after it died",
            command="raylm ps",
        )
    return actor, [(c, _placement(c)) for c in configs]


def _last_gateway_report(actor: Any) -> float | None:
    """Seconds since a gateway of the deployment last reported (None: never). A gateway
    that died a moment ago has reported within LOAD_FRESH_S too: wait until its silence
    passes that, while a live one (reporting every refresh) stays below it."""
    import ray

    deadline = time.monotonic() + LOAD_FRESH_S + 2.0
    while True:
        seen: float | None = ray.get(actor.gateway_seen.remote(), timeout=30)
        if seen is None or seen >= LOAD_FRESH_S or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def _placement(c: DeploymentConfig) -> Placement:
    return Placement(
        device=c.device,
        replicas=c.replicas,
        tensor_parallel_size=c.tensor_parallel_size,
        pipeline_parallel_size=c.pipeline_parallel_size,
        nodes_per_replica=c.nodes_per_replica,
        cpus_per_node=c.cpus_per_node,
        gpus_per_node=c.gpus_per_node,
    )


async def wait_until_ready(
    controller: Any, reporter: Reporter, stop: asyncio.Event
) -> list[ReplicaInfo]:
    """Wait for every replica to be ready; raise ReplicaError when one keeps failing."""
    ever_ready: set[str] = set()
    while not stop.is_set():
        infos: list[ReplicaInfo] = await controller.replica_infos.remote()
        reporter.replicas(infos)
        ever_ready |= {i.replica_id for i in infos if i.state is ReplicaState.READY}
        for info in infos:
            if info.replica_id not in ever_ready and info.restarts >= _MAX_FAILED_STARTS:
                raise ReplicaError(
                    f"Replica {info.replica_id} failed to start {info.restarts} times",
                    replica=info.replica_id,
                    log_path=info.log_path,
                    why=info.detail,
                    fix="Read the vLLM log for the cause (a bad --engine-arg, too little "
                    "memory, a damaged model)",
                    command=f"tail -n 60 {info.log_path}" if info.log_path else "raylm status",
                )
        if infos and all(i.state is ReplicaState.READY for i in infos):
            return infos
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return []


def _take_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    # Also called after ray.init: Ray's core worker installs a SIGTERM handler that dumps a
    # stack and kills the process, which would skip the drain and leave its daemons behind.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@contextlib.contextmanager
def _signals_to(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[None]:
    _take_signals(loop, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve(specs: list[ServeSpec], reporter: Reporter, attach: bool = False) -> None:
    """Run a deployment of one model or several (one spec each, sharing the first's
    gateway, cluster and health settings) in the foreground until SIGINT/SIGTERM, then
    drain and stop it all. With `attach`, the deployment of that name already runs (its
    raylm serve was killed): serve its gateway again over its replicas as they are."""
    spec = specs[0]  # the deployment's own fields are the same in every spec
    check_port_free(spec.host, spec.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with _signals_to(loop, stop):
        entries = []
        for one in specs if not attach else []:
            what = "the model" if len(specs) == 1 else (one.model or "the demo model")
            reporter.phase(f"resolving {what}")
            entry = await loop.run_in_executor(None, ModelStore().resolve, one.model)
            check_model_layout(
                Path(entry.path), one.tensor_parallel_size or 1, one.pipeline_parallel_size or 1
            )
            entries.append(entry)
        reporter.phase("connecting to Ray")
        conn = await loop.run_in_executor(None, connect, spec.address)
        _take_signals(loop, stop)
        controller = None
        gateway: GatewayServer | None = None
        # An attached deployment is not this run's to stop until it serves again: a
        # failure before that leaves it running, as it was found.
        owned = not attach
        try:
            if attach and conn.started_here:
                raise ConfigError(
                    f"No deployment named '{spec.name}' runs: this machine is in no cluster",
                    why="a deployment on a private cluster ends with its raylm serve",
                    fix="Start it again, without --attach",
                    command="raylm serve",
                )
            if attach:
                controller, planned = await loop.run_in_executor(None, attach_controller, spec.name)
                configs = [c for c, _ in planned]
                reporter.phase(
                    f"serving deployment '{spec.name}' again: "
                    + ", ".join(f"{c.served_model_name}: {p.describe()}" for c, p in planned)
                    + " (as its controller holds them; the spec's models are not applied)"
                )
            else:
                await loop.run_in_executor(None, check_not_running, spec.name)
                planned = await loop.run_in_executor(
                    None, plan_together, specs, entries, conn.started_here, reporter
                )
                configs = [c for c, _ in planned]
                # Known only now for models given by store name or directory.
                check_served_names([c.served_model_name for c in configs], "The deployment")
                for config, layout in planned:
                    name = f"{config.served_model_name}: " if len(planned) > 1 else ""
                    reporter.phase(f"starting {name}{layout.describe()}")
                controller = await loop.run_in_executor(None, start_controller, configs)

            gateway = GatewayServer(
                create_gateway(
                    DeploymentOperator(controller, spec, configs[0], conn.started_here),
                    GatewaySettings(
                        api_key=spec.api_key,
                        api_keys=spec.keys,
                        admin_key=spec.admin_key,
                        upstream_api_key=configs[0].replica_api_key,
                        limits=spec.limits,
                        drain_timeout_s=spec.drain_timeout_s,
                        routing=spec.routing,
                        model_dirs={c.served_model_name: c.model_path for c in configs},
                    ),
                ),
                spec.host,
                spec.port,
                workers=spec.gateway_workers or _default_workers(spec),
            )
            await gateway.start()
            if attach or await wait_until_ready(controller, reporter, stop):
                owned = True
                # The gateway reads the table on its own clock: make it current first, so
                # a request sent the moment `ready` is printed finds the replicas.
                await gateway.gateway.refresh()
                endpoint = f"http://{_reachable_host(spec.host)}:{spec.port}"
                keyed = spec.api_key is not None or bool(spec.keys)
                models = [(c.served_model_name, layout) for c, layout in planned]
                reporter.ready(endpoint, models, keyed)
                settle_heap()
            await _watch(controller, reporter, stop)
        finally:
            reporter.stopping("draining in-flight requests")
            if gateway is not None:
                with contextlib.suppress(Exception):
                    await gateway.stop(spec.drain_timeout_s)
            if controller is not None and owned:
                reporter.stopping("stopping replicas")
                await _stop_controller(controller)
            elif controller is not None:
                reporter.stopping(f"leaving deployment '{spec.name}' running, as it was found")
            reporter.stopping("disconnecting from Ray" if not conn.started_here else "stopping Ray")
            await loop.run_in_executor(None, conn.close)


def _default_workers(spec: ServeSpec) -> int:
    """One gateway worker per 8 cores, but one alone when a key is rate limited: the
    limits are counted per process (raylm.gateway.rate_limits)."""
    return 1 if any(k.limited for k in spec.keys) else default_workers()


def _reachable_host(host: str) -> str:
    """The address clients use for a gateway bound to `host` (a wildcard: this node's IP)."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    import ray  # function-local: Ray reads its auth settings at import

    return str(ray.util.get_node_ip_address())


async def _watch(controller: Any, reporter: Reporter, stop: asyncio.Event) -> None:
    """Keep reporting replica changes (restarts, failures) until asked to stop."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        with contextlib.suppress(Exception):
            reporter.replicas(await asyncio.wait_for(controller.replica_infos.remote(), 5.0))


async def _stop_controller(controller: Any) -> None:
    import ray  # function-local: Ray reads its auth settings at import

    try:
        await asyncio.wait_for(controller.shutdown.remote(), 60)
    except Exception as e:
        logger.warning("controller shutdown: %s", e)
    with contextlib.suppress(Exception):
        ray.kill(controller, no_restart=True)
