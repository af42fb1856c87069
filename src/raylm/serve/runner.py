"""`raylm serve` end to end: model, cluster, layout, controller, gateway, drain and stop.

The CLI hands in a spec and a Reporter (it prints); everything else happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from raylm.config import ServeSpec
from raylm.errors import ConfigError, PlanError, ReplicaError
from raylm.replica import ReplicaInfo, ReplicaState
from raylm.serve.deployment import CONTROLLER_NAMESPACE, DeploymentConfig
from raylm.serve.engine import resolve_dtype
from raylm.serve.placement import NodeResources, Placement, fit_placement

if TYPE_CHECKING:
    from raylm.models.facts import ModelFacts
    from raylm.models.store import ModelEntry
    from raylm.planner.cluster import ClusterSpec

logger = logging.getLogger(__name__)

# A replica that fails this many starts before it was ever ready is a configuration
# problem (bad model, bad engine argument), not a transient one: stop and say so.
_MAX_FAILED_STARTS = 3
# Context length on CPU when none is asked for: the KV cache at the default memory share
# holds ~5.9k float32 tokens of the demo model, less than its 8k native context.
_CPU_DEFAULT_MAX_MODEL_LEN = 4096


class Reporter(Protocol):
    """What the runner tells whoever started it (the CLI prints these)."""

    def phase(self, text: str) -> None: ...

    def replicas(self, infos: list[ReplicaInfo]) -> None: ...

    def ready(self, endpoint: str, model: str, layout: Placement, api_key_set: bool) -> None: ...

    def stopping(self, text: str) -> None: ...


def check_port_free(host: str, port: int) -> None:
    """Fail fast, before anything loads, when the gateway's port is taken."""
    from raylm.gateway.server import bind_socket

    bind_socket(host, port).close()


def alive_nodes() -> list[NodeResources]:
    import ray

    return [
        NodeResources(
            node_id=n["NodeID"],
            ip=n["NodeManagerAddress"],
            cpus=int(n["Resources"].get("CPU", 0)),
            gpus=int(n["Resources"].get("GPU", 0)),
        )
        for n in ray.nodes()
        if n["Alive"]
    ]


def _model_config(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((path / "config.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def check_model_layout(path: Path, tp: int, pp: int) -> None:
    """Refuse a TP/PP the model cannot take (e.g. heads not divisible), before loading."""
    from raylm.models.facts import read_model_facts
    from raylm.planner import check_layout

    reasons = check_layout(read_model_facts(path), tp, pp)
    if reasons:
        raise PlanError(
            f"TP={tp} PP={pp} cannot work for this model",
            why="; ".join(reasons),
            fix="Pick a TP that divides the attention heads; `raylm plan` lists valid layouts",
            command=f"raylm plan {path}",
        )


def preflight_nodes(
    entry: ModelEntry, nodes: list[NodeResources], reporter: Reporter
) -> tuple[list[NodeResources], dict[str, str], dict[str, str]]:
    """Verify the model's copy on every node: (eligible nodes, their model paths, refusals)."""
    from raylm.models.sync import verify_on_nodes

    reporter.phase(f"verifying {entry.name} on {len(nodes)} node(s)")
    results = verify_on_nodes(entry.name, [n.ip for n in nodes])
    paths = {ip: r.path for ip, r in results.items() if r.ok}
    refused = {ip: r.summary() for ip, r in results.items() if not r.ok}
    return [n for n in nodes if n.ip in paths], paths, refused


def build_deployment(
    spec: ServeSpec,
    entry: ModelEntry,
    nodes: list[NodeResources],
    *,
    local: bool,
    node_model_paths: dict[str, str] | None = None,
    allowed_node_ips: list[str] | None = None,
) -> tuple[DeploymentConfig, Placement]:
    model_path = Path(entry.path)
    tp = spec.tensor_parallel_size or 1
    pp = spec.pipeline_parallel_size or 1
    layout = fit_placement(
        nodes,
        replicas=spec.replicas or 1,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        cpus_per_replica=spec.cpus_per_replica,
    )
    if spec.executor == "ray" and layout.device == "cpu":
        raise PlanError(
            "executor = 'ray' cannot run on CPU nodes",
            why="vLLM's CPU platform does not support its Ray executor",
            fix="Use the default executor 'mp' (vLLM's own multi-node mode)",
        )
    # With vLLM's Ray executor, vLLM places its own GPU workers through Ray: raylm runs one
    # supervisor (rank 0, no devices of its own) per replica and passes the cluster on.
    ray_executor = spec.executor == "ray"
    max_len = spec.max_model_len
    if max_len is None and layout.device == "cpu":
        native = int(_model_config(model_path).get("max_position_embeddings") or 0)
        max_len = min(native, _CPU_DEFAULT_MAX_MODEL_LEN) if native else _CPU_DEFAULT_MAX_MODEL_LEN
    config = DeploymentConfig(
        name=spec.name,
        model_path=str(model_path),
        node_model_paths=node_model_paths or {},
        allowed_node_ips=allowed_node_ips,
        served_model_name=spec.served_model_name or entry.name,
        replicas=layout.replicas,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        nodes_per_replica=1 if ray_executor else layout.nodes_per_replica,
        device="cuda" if layout.device == "cuda" else "cpu",
        gpus_per_node=0 if ray_executor else layout.gpus_per_node,
        cpus_per_node=layout.cpus_per_node,
        dtype=resolve_dtype(spec.dtype, layout.device),
        max_model_len=max_len,
        executor=spec.executor,
        engine_args=spec.engine_args,
        probing=spec.probing(),
        bind_host="127.0.0.1" if local else None,
        replica_api_key=SecretStr(secrets.token_urlsafe(24)),
    )
    return config, layout


def apply_plan(spec: ServeSpec, facts: ModelFacts, cluster: ClusterSpec) -> tuple[ServeSpec, str]:
    """Fill in TP/PP/replicas/context the user left out from the planner's choice; refuse
    given sizes that cannot work. Returns the completed spec and the plan, in words."""
    from raylm.planner import plan

    given = spec.engine_args.get("gpu-memory-utilization")  # keys are dashed (ServeSpec)
    result = plan(
        facts,
        cluster,
        max_model_len=spec.max_model_len,
        gpu_memory_utilization=None if given is None else float(given),
        tensor_parallel_size=spec.tensor_parallel_size,
        pipeline_parallel_size=spec.pipeline_parallel_size,
        replicas=spec.replicas,
        # Without CUDA graphs vLLM reserves no memory for them: plan the same way.
        enforce_eager=spec.engine_args.get("enforce-eager") is True,
    )
    chosen = result.plan
    if chosen is None:  # plan() raises when nothing fits; keep the user's spec otherwise
        return spec, "no plan"
    # The share the plan fits in (lowered to what other processes leave free, if need be).
    engine_args = {**spec.engine_args, "gpu-memory-utilization": chosen.gpu_memory_utilization}
    done = spec.model_copy(
        update={
            "tensor_parallel_size": chosen.tensor_parallel_size,
            "pipeline_parallel_size": chosen.pipeline_parallel_size,
            "replicas": chosen.replicas,
            "max_model_len": spec.max_model_len or chosen.max_model_len,
            "engine_args": engine_args,
        }
    )
    words = (
        f"plan: {chosen.shape()}, {chosen.kv_cache_tokens_per_replica} KV-cache tokens and "
        f"{chosen.max_concurrent_seqs} full-length sequences per replica, "
        f"gpu_memory_utilization {chosen.gpu_memory_utilization:g}"
        + "".join(f"; {w}" for w in chosen.warnings)
    )
    return done, words


def _plan_on_gpus(spec: ServeSpec, entry: ModelEntry, reporter: Reporter) -> ServeSpec:
    from raylm.cluster.inventory import cluster_inventory
    from raylm.models.facts import read_model_facts
    from raylm.planner import cluster_from_inventory

    reporter.phase("planning the layout from the live GPU inventory")
    inventory = cluster_inventory().model_dump(mode="json")
    done, words = apply_plan(
        spec, read_model_facts(Path(entry.path)), cluster_from_inventory(inventory)
    )
    reporter.phase(words)
    return done


def plan_deployment(
    spec: ServeSpec, entry: ModelEntry, local: bool, reporter: Reporter
) -> tuple[DeploymentConfig, Placement]:
    """Fit the spec onto the live cluster, placing only where the model copy is verified."""
    nodes = alive_nodes()
    if any(n.gpus for n in nodes):
        # On CPU nodes the layout is the user's (default one replica): several vLLM
        # engines sharing one host's cores gain nothing, and the planner models a CPU
        # node as one device.
        spec = _plan_on_gpus(spec, entry, reporter)
    # A private local cluster is this node alone, whose copy `resolve` just checked; a bare
    # directory (not in the store) has no manifest to verify against.
    if local or spec.skip_verify or not entry.manifest:
        return build_deployment(spec, entry, nodes, local=local)
    eligible, paths, refused = preflight_nodes(entry, nodes, reporter)
    for ip, why in refused.items():
        reporter.phase(f"not placing replicas on {ip}: {why}")
    try:
        return build_deployment(
            spec,
            entry,
            eligible,
            local=local,
            node_model_paths=paths,
            allowed_node_ips=[n.ip for n in eligible],
        )
    except PlanError as e:
        if not refused:
            raise
        raise PlanError(
            f"{e.what}, using only the nodes with a verified copy of {entry.name}",
            why="missing or unverified on " + "; ".join(refused.values()),
            fix="Copy the model to those nodes (or pass --skip-verify to serve anyway)",
            command=f"raylm model sync {entry.name}",
        ) from None


def start_controller(config: DeploymentConfig) -> Any:
    """Create the detached controller actor; refuse if this deployment already runs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raylm.serve.controller import Controller

    try:
        old = ray.get_actor(config.controller_name, namespace=CONTROLLER_NAMESPACE)
    except ValueError:
        old = None
    if old is not None:
        try:
            ray.get(old.ping.remote(), timeout=5)
        except Exception:
            ray.kill(old)
        else:
            raise ConfigError(
                f"A deployment named '{config.name}' already runs on this cluster",
                fix="Stop it first, or give this one another name",
                command=f"raylm serve --name {config.name}-2",
            )
    here = ray.get_runtime_context().get_node_id()
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
        .remote(config.model_dump())
    )
    ray.get(actor.start.remote())
    return actor


async def wait_until_ready(
    controller: Any, reporter: Reporter, stop: asyncio.Event
) -> list[ReplicaInfo]:
    """Wait for every replica to be ready; raise ReplicaError when one keeps failing."""
    ever_ready: set[str] = set()
    while not stop.is_set():
        infos = [ReplicaInfo(**r) for r in await controller.replica_infos.remote()]
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


async def serve(spec: ServeSpec, reporter: Reporter) -> None:
    """Run a deployment in the foreground until SIGINT/SIGTERM, then drain and stop it all."""
    from raylm.cluster.context import connect
    from raylm.gateway import GatewayServer, GatewaySettings, create_gateway
    from raylm.models.store import ModelStore

    check_port_free(spec.host, spec.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with _signals_to(loop, stop):
        reporter.phase("resolving the model")
        entry = await loop.run_in_executor(None, ModelStore().resolve, spec.model)
        check_model_layout(
            Path(entry.path), spec.tensor_parallel_size or 1, spec.pipeline_parallel_size or 1
        )
        reporter.phase("connecting to Ray")
        conn = await loop.run_in_executor(None, connect, spec.address)
        _take_signals(loop, stop)
        controller = None
        gateway: GatewayServer | None = None
        try:
            config, layout = await loop.run_in_executor(
                None, plan_deployment, spec, entry, conn.started_here, reporter
            )
            reporter.phase(f"starting {layout.describe()}")
            controller = await loop.run_in_executor(None, start_controller, config)
            from raylm.serve.source import ControllerReplicaSource

            gateway = GatewayServer(
                create_gateway(
                    ControllerReplicaSource(controller),
                    GatewaySettings(
                        api_key=spec.api_key,
                        upstream_api_key=config.replica_api_key,
                        limits=spec.limits,
                        drain_timeout_s=spec.drain_timeout_s,
                    ),
                ),
                spec.host,
                spec.port,
            )
            await gateway.start()
            if await wait_until_ready(controller, reporter, stop):
                # The gateway reads the table on its own clock: make it current first, so
                # a request sent the moment `ready` is printed finds the replicas.
                await gateway.gateway.refresh()
                endpoint = f"http://{_reachable_host(spec.host)}:{spec.port}"
                reporter.ready(endpoint, config.served_model_name, layout, spec.api_key is not None)
            await _watch(controller, reporter, stop)
        finally:
            reporter.stopping("draining in-flight requests")
            if gateway is not None:
                with contextlib.suppress(Exception):
                    await gateway.stop(spec.drain_timeout_s)
            reporter.stopping("stopping replicas")
            if controller is not None:
                await _stop_controller(controller)
            reporter.stopping("disconnecting from Ray" if not conn.started_here else "stopping Ray")
            await loop.run_in_executor(None, conn.close)


def _reachable_host(host: str) -> str:
    """The address clients use for a gateway bound to `host` (a wildcard: this node's IP)."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    import ray

    return str(ray.util.get_node_ip_address())


async def _watch(controller: Any, reporter: Reporter, stop: asyncio.Event) -> None:
    """Keep reporting replica changes (restarts, failures) until asked to stop."""
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)
        with contextlib.suppress(Exception):
            rows = await asyncio.wait_for(controller.replica_infos.remote(), 5.0)
            reporter.replicas([ReplicaInfo(**r) for r in rows])


async def _stop_controller(controller: Any) -> None:
    import ray

    try:
        await asyncio.wait_for(controller.shutdown.remote(), 60)
    except Exception as e:
        logger.warning("controller shutdown: %s", e)
    with contextlib.suppress(Exception):
        ray.kill(controller, no_restart=True)
