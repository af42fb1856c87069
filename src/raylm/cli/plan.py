"""`raylm plan MODEL`: choose TP/PP/replicas before anything loads, and say why."""

from __future__ import annotations

import json
import shlex
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from raylm.errors import ConfigError, PlanError
from raylm.models.facts import ModelFacts
from raylm.planner import OBJECTIVES, ClusterSpec, Layout, parse_cluster_spec, plan
from raylm.serve.engine import RankLaunch, printable
from raylm.units import GIB

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def live_cluster(address: str | None = None) -> ClusterSpec:
    """The cluster this node belongs to (`raylm status`'s inventory), as a ClusterSpec."""
    from raylm.cluster.inventory import cluster_inventory
    from raylm.planner import cluster_from_inventory

    return cluster_from_inventory(cluster_inventory(address))


def _gib(b: float) -> str:
    return f"{b / GIB:.1f}"


def _layout_row(lay: Layout) -> list[str]:
    return [
        str(lay.tensor_parallel_size),
        str(lay.pipeline_parallel_size),
        str(lay.replicas),
        str(lay.gpus_per_replica),
        str(lay.nodes_per_replica),
        str(lay.max_model_len),
        _gib(lay.weight_bytes_per_gpu),
        str(lay.kv_cache_tokens_per_replica),
        str(lay.max_concurrent_seqs),
        f"{lay.est_tokens_per_s:.0f}",
        f"{lay.est_ms_per_token:.1f}",
    ]


def _print_human(
    facts: ModelFacts,
    cluster: ClusterSpec,
    result: Any,
    launches: list[RankLaunch],
    show_all: bool,
) -> None:
    lay: Layout = result.plan
    q = f", {facts.quantization.method} {facts.quantization.bits}-bit" if facts.quantization else ""
    exact = "exact" if facts.weight_bytes_exact else "estimated"
    out.print(
        f"[bold]{facts.name}[/bold]: {facts.num_params / 1e9:.2f}B params{q}, "
        f"{_gib(facts.weight_bytes)} GiB weights ({exact}), {facts.num_layers} layers, "
        f"{facts.num_attention_heads} heads / {facts.num_kv_heads} KV heads",
        highlight=False,
    )
    out.print(f"cluster: {cluster.summary()}   objective: {result.objective}", highlight=False)
    tp, pp = lay.tensor_parallel_size, lay.pipeline_parallel_size
    out.print(
        f"\n[bold green]plan[/bold green]: TP={tp} PP={pp} x {lay.replicas} replica(s), "
        f"{lay.gpus_per_replica} GPU(s) each on {lay.nodes_per_replica} node(s), "
        f"max_model_len {lay.max_model_len}, {lay.dtype}",
        highlight=False,
    )
    usable = lay.device_memory_bytes * lay.gpu_memory_utilization
    out.print(
        f"  per GPU: {_gib(lay.weight_bytes_per_gpu)} GiB weights + "
        f"{_gib(lay.reserve_bytes_per_gpu)} GiB reserve + "
        f"{_gib(lay.kv_cache_bytes_per_gpu)} GiB KV cache of {_gib(usable)} GiB usable; "
        f"{lay.kv_cache_tokens_per_replica:,} KV tokens per replica = "
        f"{lay.max_concurrent_seqs} sequences of {lay.max_model_len}",
        highlight=False,
    )
    for w in lay.warnings:
        out.print(f"  [yellow]warning[/yellow]: {w}", highlight=False)
    table = Table(title="feasible layouts (best first)", title_justify="left")
    rows = [lay, *result.alternatives]
    cells = [_layout_row(r) for r in (rows if show_all else rows[:10])]
    # Short headers keep it within 80 columns; numbers are never cut, even in a pipe.
    for col, h in enumerate(
        (
            "TP",
            "PP",
            "repl",
            "GPUs",
            "nodes",
            "max len",
            "W GiB",
            "KV tok",
            "seqs",
            "tok/s",
            "ms/tok",
        )
    ):
        width = max(len(row[col]) for row in cells)
        table.add_column(h, justify="right", no_wrap=True, min_width=width)
    for i, row in enumerate(cells):
        table.add_row(*row, style="bold green" if i == 0 else None)
    out.print(table)
    if len(rows) > 10 and not show_all:
        out.print(f"  ... {len(rows) - 10} more (--all shows them)")
    if result.rejected:
        out.print("[bold]rejected[/bold]:")
        shown = result.rejected if show_all else result.rejected[:12]
        for rej in shown:
            out.print(f"  - {rej.reason}", highlight=False)
        if len(result.rejected) > len(shown):
            out.print(f"  ... {len(result.rejected) - len(shown)} more (--all shows them)")
    across = " and, across nodes, --master-addr/--master-port" if len(launches) > 1 else ""
    out.print(f"\n[bold]each replica runs[/bold] (raylm adds --host, --port{across} at launch):")
    for launch in launches:
        out.print(shlex.join(printable(launch)), soft_wrap=True, highlight=False)


def plan_cmd(
    model: str = typer.Argument(..., help="Model directory, config.json, store name or hub id."),
    cluster: str = typer.Option(
        "live",
        "--cluster",
        "-c",
        help="'live' (the running cluster), NODESxGPUSxGPU like 2x4xL20 or 1x8x80GB "
        "(+ib for InfiniBand), or a JSON/TOML file.",
    ),
    address: str | None = typer.Option(
        None, "--address", help="GCS address for --cluster live (default: this node's)."
    ),
    objective: str = typer.Option(
        "throughput", "--objective", "-o", help="throughput | latency | context."
    ),
    max_model_len: int | None = typer.Option(
        None, "--max-model-len", help="Context length per sequence (default: the model's)."
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None,
        "--gpu-memory-utilization",
        help="Share of each GPU's memory vLLM may use [default: 0.9, vLLM's].",
    ),
    tp: int | None = typer.Option(None, "--tp", help="Only consider this tensor-parallel size."),
    pp: int | None = typer.Option(None, "--pp", help="Only consider this pipeline-parallel size."),
    replicas: int | None = typer.Option(None, "--replicas", help="Require this many replicas."),
    allow_cross_node_tp: bool = typer.Option(
        False, "--allow-cross-node-tp", help="Let TP span nodes (needs InfiniBand)."
    ),
    enforce_eager: bool = typer.Option(
        False, "--enforce-eager", help="Plan without the CUDA-graph reserve."
    ),
    executor: str = typer.Option(
        "mp", "--executor", help="mp|ray: the executor `raylm serve` would use (as its flag)."
    ),
    show_all: bool = typer.Option(False, "--all", help="Show every alternative and rejection."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Choose tensor-parallel, pipeline-parallel and replica counts that fit, and say why."""
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"Unknown objective {objective!r}", fix=f"use one of {', '.join(OBJECTIVES)}"
        )
    from raylm.config import load_spec
    from raylm.models.reference import planning_reference
    from raylm.serve.deployment import deployment_from_layout

    spec = live_cluster(address) if cluster == "live" else parse_cluster_spec(cluster)
    facts, ref = planning_reference(model)
    result = plan(
        facts,
        spec,
        objective=objective,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        replicas=replicas,
        allow_cross_node_tp=allow_cross_node_tp,
        enforce_eager=enforce_eager,
    )
    if result.plan is None:  # plan() raises when nothing fits; kept for the type checker
        raise PlanError(f"No layout of {facts.name} fits {spec.summary()}")
    engine_args: dict[str, Any] = {}
    if enforce_eager:
        engine_args["enforce-eager"] = True
    # The spec `raylm serve` would run with these flags, checked the same way.
    serve_spec = load_spec(None, {"executor": executor, "engine_args": engine_args})
    launches = deployment_from_layout(
        result.plan, serve_spec, model_path=ref, served_model_name=facts.name
    ).planned_launches()
    if as_json:
        doc = {
            "model": facts.model_dump(mode="json"),
            "cluster": spec.model_dump(mode="json"),
            "objective": result.objective,
            "plan": result.plan.model_dump(mode="json"),
            "alternatives": [a.model_dump(mode="json") for a in result.alternatives],
            "rejected": [r.model_dump(mode="json") for r in result.rejected],
            "vllm_command": printable(launches[0]),
            "vllm_commands": [printable(x) for x in launches],
        }
        print(json.dumps(doc, indent=2))
        return
    _print_human(facts, spec, result, launches, show_all)


def register(app: typer.Typer) -> None:
    """Add `raylm plan` to the app."""
    app.command("plan")(plan_cmd)
