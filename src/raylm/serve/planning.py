"""From a spec, a model and the live cluster to a deployment: what `raylm serve` starts.

Owns the layout (the planner's choice on GPU nodes, the user's on CPU nodes), the checks
that refuse a layout before anything loads, the nodes with a verified copy of the model,
and the DeploymentConfig and Placement the runner then starts (serve/runner.py).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from raylm.cluster.inventory import cluster_inventory
from raylm.cluster.nodes import NodeView, alive_nodes
from raylm.config import ServeSpec
from raylm.errors import PlanError
from raylm.models.sync import verify_on_nodes
from raylm.models.weights import read_model_facts
from raylm.planner import Layout, check_layout, cluster_from_inventory, plan
from raylm.serve.deployment import DeploymentConfig
from raylm.serve.engine import resolve_dtype
from raylm.serve.placement import Placement, fit_placement, place_plan

if TYPE_CHECKING:
    from raylm.models.facts import ModelFacts
    from raylm.models.store import ModelEntry
    from raylm.planner import ClusterSpec
    from raylm.serve.runner import Reporter

Held = dict[str, dict[str, float]]
"""Per node IP, the Ray resources (CPU, GPU) other models of a deployment take there."""

# Context length on CPU when none is asked for: the KV cache at the default memory share
# holds ~5.9k float32 tokens of the demo model, less than its 8k native context.
_CPU_DEFAULT_MAX_MODEL_LEN = 4096


def _model_config(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((path / "config.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def check_model_layout(path: Path, tp: int, pp: int) -> None:
    """Refuse a TP/PP the model cannot take (e.g. heads not divisible), before loading."""

    reasons = check_layout(read_model_facts(path), tp, pp)
    if reasons:
        raise PlanError(
            f"TP={tp} PP={pp} cannot work for this model",
            why="; ".join(reasons),
            fix="Pick a TP that divides the attention heads; `raylm plan` lists valid layouts",
            command=f"raylm plan {path}",
        )


def preflight_nodes(
    entry: ModelEntry, nodes: list[NodeView], reporter: Reporter
) -> tuple[list[NodeView], dict[str, str], dict[str, str]]:
    """Verify the model's copy on every node: (eligible nodes, their model paths, refusals)."""

    reporter.phase(f"verifying {entry.name} on {len(nodes)} node(s)")
    results = verify_on_nodes(entry.name, [n.ip for n in nodes])
    paths = {ip: r.path for ip, r in results.items() if r.ok}
    refused = {ip: r.summary() for ip, r in results.items() if not r.ok}
    return [n for n in nodes if n.ip in paths], paths, refused


def build_deployment(
    spec: ServeSpec,
    entry: ModelEntry,
    nodes: list[NodeView],
    *,
    local: bool,
    node_model_paths: dict[str, str] | None = None,
    allowed_node_ips: list[str] | None = None,
    planned: Layout | None = None,
) -> tuple[DeploymentConfig, Placement]:
    """The controller's deployment: the planned layout (`planned`, GPU clusters) on the
    nodes the planner chose, else the spec's sizes fitted onto `nodes`."""
    model_path = Path(entry.path)
    tp = spec.tensor_parallel_size or 1
    pp = spec.pipeline_parallel_size or 1
    if planned is not None:
        layout = place_plan(nodes, planned)
        allowed_node_ips = [
            ip for ip in (allowed_node_ips or [n.ip for n in nodes]) if ip in planned.nodes
        ]
    else:
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
        drain_timeout_s=spec.drain_timeout_s,
        autoscaling=spec.autoscaling,
        kv_events=spec.routing == "kv-aware",
        bind_host="127.0.0.1" if local else None,
        replica_api_key=SecretStr(secrets.token_urlsafe(24)),
    )
    return config, layout


def apply_plan(
    spec: ServeSpec, facts: ModelFacts, cluster: ClusterSpec
) -> tuple[ServeSpec, Layout | None, str]:
    """Fill in TP/PP/replicas/context the user left out from the planner's choice; refuse
    given sizes that cannot work. Returns the completed spec, the chosen layout (what serve
    places) and the plan, in words."""

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
        return spec, None, "no plan"
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
    return done, chosen, words


def _plan_on_gpus(
    spec: ServeSpec, entry: ModelEntry, reporter: Reporter, held: Held
) -> tuple[ServeSpec, Layout | None]:

    reporter.phase("planning the layout from the live GPU inventory")
    cluster = cluster_from_inventory(cluster_inventory())
    if held:  # GPUs that models planned before this one hold
        taken = {ip: int(r.get("GPU", 0)) for ip, r in held.items()}
        nodes = [
            n.model_copy(update={"gpu_count": n.gpu_count - taken.get(n.name, 0)})
            for n in cluster.nodes
            if n.gpu_count > taken.get(n.name, 0)
        ]
        if not nodes:
            raise PlanError(
                f"No GPU is left for {entry.name}",
                why="the models before it in the spec file take every GPU",
                fix="Lower their replicas or TP, or serve fewer models",
            )
        cluster = cluster.model_copy(update={"nodes": nodes})
    done, chosen, words = apply_plan(spec, read_model_facts(Path(entry.path)), cluster)
    reporter.phase(words)
    return done, chosen


def _less(nodes: list[NodeView], held: Held) -> list[NodeView]:
    """`nodes` with what earlier models hold taken off their resources."""
    if not held:
        return nodes
    out = []
    for n in nodes:
        mine = held.get(n.ip, {})
        left = {k: v - mine.get(k, 0.0) for k, v in n.resources.items()}
        out.append(n.model_copy(update={"resources": left}))
    return out


def plan_deployment(
    spec: ServeSpec, entry: ModelEntry, local: bool, reporter: Reporter, held: Held | None = None
) -> tuple[DeploymentConfig, Placement]:
    """Fit the spec onto the live cluster, placing only where the model copy is verified;
    `held` (per node IP, the resources earlier models of the deployment take) is left
    free."""
    held = held or {}
    if spec.autoscaling is not None:
        # Planned for its most replicas, so that they fit at start; it starts with fewer.
        start = spec.autoscaling.starting(spec.replicas)
        reporter.phase(
            f"autoscaling {spec.autoscaling.describe()}: planning room for "
            f"{spec.autoscaling.max_replicas}, starting {start}"
        )
        most = {"replicas": spec.autoscaling.max_replicas, "autoscaling": None}
        try:
            config, placement = plan_deployment(
                spec.model_copy(update=most), entry, local, reporter, held
            )
        except PlanError as e:
            raise PlanError(
                f"autoscaling's max_replicas ({spec.autoscaling.max_replicas}) does not fit",
                why=f"{e.what}" + (f" ({e.why})" if e.why else ""),
                fix="Lower max_replicas (or the replica's TP or cpus_per_replica), or add nodes",
                command=e.command,
            ) from None
        starting = replace(placement, replicas=start)
        return config.model_copy(
            update={"replicas": start, "autoscaling": spec.autoscaling}
        ), starting
    nodes = _less(alive_nodes(), held)
    planned: Layout | None = None
    if any(n.gpus for n in nodes):
        # On CPU nodes the layout is the user's (default one replica): several vLLM
        # engines sharing one host's cores gain nothing, and the planner models a CPU
        # node as one device.
        spec, planned = _plan_on_gpus(spec, entry, reporter, held)
    # A private local cluster is this node alone, whose copy `resolve` just checked; a bare
    # directory (not in the store) has no manifest to verify against.
    if local or spec.skip_verify or not entry.manifest:
        return build_deployment(spec, entry, nodes, local=local, planned=planned)
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
            planned=planned,
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
