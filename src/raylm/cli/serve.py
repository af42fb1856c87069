"""`raylm serve`: run a model behind the OpenAI-compatible gateway, in the foreground."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import typer
import uvloop
from rich.console import Console

from raylm.config import load_specs
from raylm.engine_args import parse_engine_arg
from raylm.replica import ReplicaInfo
from raylm.serve.placement import Placement

# soft_wrap: progress lines are read in logs and grepped; rich would cut them at 80 columns.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class CliReporter:
    """Prints the runner's progress: phases, replica states as they change, the endpoint."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def phase(self, text: str) -> None:
        console.print(f"[cyan]raylm[/cyan] {text} ...")

    def replicas(self, infos: list[ReplicaInfo]) -> None:
        for i in infos:
            line = f"{i.state.value}: {i.detail}"
            if self._last.get(i.replica_id) != line:
                self._last[i.replica_id] = line
                where = i.node or "?"
                console.print(f"  replica [bold]{i.replica_id}[/bold] on {where}: {line}")

    def ready(self, endpoint: str, models: list[tuple[str, Placement]], api_key_set: bool) -> None:
        out.print("[bold green]raylm is ready[/bold green]")
        model = models[0][0]
        if len(models) == 1:
            about = [("model", model), ("layout", models[0][1].describe())]
        else:
            about = [("model", f"{name}: {layout.describe()}") for name, layout in models]
        # Plain lines, not a table: a table cuts a long URL to fit the terminal.
        for name, value in (
            ("endpoint", f"{endpoint}/v1"),
            *about,
            ("health", f"{endpoint}/health   metrics: {endpoint}/metrics"),
            ("dashboard", f"{endpoint}/dashboard"),
        ):
            out.print(f" {name:<9} {value}", highlight=False)
        # Double quotes: the shell must expand the variable the user keeps the key in.
        auth = ' -H "Authorization: Bearer $RAYLM_API_KEY"' if api_key_set else ""
        body = (
            '{"model":"' + model + '","messages":[{"role":"user","content":'
            '"What is the capital of France?"}],"temperature":0,"max_tokens":20}'
        )
        out.print(
            f"curl {endpoint}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d {shlex.quote(body)}",
            soft_wrap=True,
            highlight=False,
        )
        out.print("Press Ctrl+C to stop.")

    def stopping(self, text: str) -> None:
        console.print(f"[yellow]raylm[/yellow] {text} ...")


def serve(
    model: str | None = typer.Argument(
        None, help="Model directory or store name; omitted: the demo model."
    ),
    file: Path | None = typer.Option(None, "-f", "--file", help="Spec file (raylm.toml)."),
    host: str | None = typer.Option(None, help="Gateway address [default: 127.0.0.1]."),
    port: int | None = typer.Option(None, help="Gateway port [default: 8000]."),
    replicas: int | None = typer.Option(None, help="Replicas [default: 1]."),
    tp: int | None = typer.Option(None, "--tp", help="Tensor-parallel size per replica."),
    pp: int | None = typer.Option(None, "--pp", help="Pipeline-parallel size per replica."),
    max_model_len: int | None = typer.Option(None, help="Context length."),
    dtype: str | None = typer.Option(None, help="auto|float32|float16|bfloat16 [default: auto]."),
    served_model_name: str | None = typer.Option(None, help="Name clients use in `model`."),
    api_key: str | None = typer.Option(
        None, help="Require this bearer key [env: RAYLM_API_KEY].", show_default=False
    ),
    admin_key: str | None = typer.Option(
        None,
        help="Open the admin routes (raylm ps, raylm scale) with this key [env: RAYLM_ADMIN_KEY].",
        show_default=False,
    ),
    address: str | None = typer.Option(
        None,
        help="Ray cluster address [default: $RAY_ADDRESS, else the cluster this machine "
        "joined, else a private one].",
    ),
    name: str | None = typer.Option(None, help="Deployment name [default: default]."),
    executor: str | None = typer.Option(None, help="mp|ray: vLLM executor for multi-GPU."),
    cpus_per_replica: int | None = typer.Option(None, help="CPU cores per replica (CPU nodes)."),
    engine_arg: list[str] = typer.Option(
        [], "--engine-arg", help="KEY=VALUE handed to `vllm serve` unchanged (repeatable)."
    ),
    max_batch_size: int | None = typer.Option(
        None, help="Most prompts per request ([serve.limits] max_prompts) [default: 64]."
    ),
    skip_verify: bool = typer.Option(False, help="Serve even where a model copy is unverified."),
    routing: str | None = typer.Option(
        None,
        help="kv-aware|prefix-approximate|least-outstanding|round-robin: how the gateway "
        "picks a replica [default: kv-aware].",
    ),
    gateway_workers: int | None = typer.Option(
        None,
        help="Gateway processes on the port, for more requests a second [default: one per "
        "8 cores, 1 to 4].",
    ),
    attach: bool = typer.Option(
        False,
        "--attach",
        help="Serve the gateway of deployment --name, already running on this cluster "
        "(its raylm serve was killed), over its replicas as they are.",
    ),
) -> None:
    """Serve MODEL on Ray behind an OpenAI-compatible gateway, until Ctrl+C or SIGTERM."""
    from raylm.serve.runner import serve as run

    overrides: dict[str, Any] = {
        "model": model,
        "host": host,
        "port": port,
        "replicas": replicas,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "max_model_len": max_model_len,
        "dtype": dtype,
        "served_model_name": served_model_name,
        "api_key": api_key or os.environ.get("RAYLM_API_KEY") or None,
        "admin_key": admin_key or os.environ.get("RAYLM_ADMIN_KEY") or None,
        "address": address,
        "name": name,
        "executor": executor,
        "cpus_per_replica": cpus_per_replica,
        "limits": {"max_prompts": max_batch_size},
        "skip_verify": skip_verify or None,
        "routing": routing,
        "gateway_workers": gateway_workers,
        "engine_args": dict(parse_engine_arg(a) for a in engine_arg),
    }
    specs = load_specs(file, overrides)
    # uvloop halves the gateway's own per-request cost (benchmarks/bench_gateway_latency.py).
    uvloop.run(run(specs, CliReporter(), attach=attach))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
