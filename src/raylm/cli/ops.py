"""`raylm ps`, `scale`, `autoscale`, `update`, `add` and `remove`: a running deployment,
shown and changed through its gateway's admin routes (raylm.admin_client), from any
machine that reaches it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from raylm.admin_client import ADMIN_KEY_ENV, DEFAULT_ENDPOINT, AdminClient
from raylm.autoscaling import Autoscaling
from raylm.config import read_model_file
from raylm.engine_args import parse_engine_arg
from raylm.errors import ConfigError
from raylm.operations import UpdateRequest

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

_ENDPOINT = typer.Option(
    DEFAULT_ENDPOINT, "--endpoint", help="The gateway `raylm serve` printed, without /v1."
)
_ADMIN_KEY = typer.Option(
    None,
    "--admin-key",
    help=f"The deployment's admin key [env: {ADMIN_KEY_ENV}].",
    show_default=False,
)


def _client(endpoint: str, admin_key: str | None) -> AdminClient:
    return AdminClient(endpoint, admin_key or os.environ.get(ADMIN_KEY_ENV) or None)


def ps(
    endpoint: str = _ENDPOINT,
    admin_key: str | None = _ADMIN_KEY,
    as_json: bool = typer.Option(False, "--json", help="Print the deployment as JSON."),
) -> None:
    """Show the deployment's models and replicas: states, nodes, restarts, versions."""
    with _client(endpoint, admin_key) as client:
        view = client.deployment()
    if as_json:
        out.print_json(json.dumps(view.model_dump(mode="json")))
        return
    # Plain columns, not a rich table: one replica a line whatever the width, for grep.
    rows = [("MODEL", "REPLICA", "VERSION", "STATE", "NODE", "RESTARTS", "DETAIL")]
    for m in view.models:
        for r in m.replicas:
            node = ",".join(r.nodes) or r.node or "-"
            version = str(m.versions.get(r.replica_id, m.version))
            row = (m.name, r.replica_id, version, r.state.value, node, str(r.restarts), r.detail)
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    out.print(f"deployment {view.name}", highlight=False, markup=False)
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        out.print("  ".join([*cells, row[6]]), highlight=False, markup=False)
    for m in view.models:
        out.print(
            f"{m.name}: {m.ready}/{m.desired} ready, version {m.version}, "
            f"TP={m.tensor_parallel_size} PP={m.pipeline_parallel_size}, from {m.model_path}"
            + (f"; {m.rollout}" if m.rollout else ""),
            highlight=False,
            markup=False,
        )
        if (a := m.autoscale) is not None:
            when = time.strftime(" (%H:%M:%S)", time.localtime(a.last_at)) if a.last_at else ""
            out.print(
                f"  autoscaling {a.settings.describe()}: load {a.load:.1f}, wants {a.wanted}"
                + (f"; last: {a.last}{when}" if a.last else "")
                + f"; {a.ups} up, {a.downs} down so far",
                highlight=False,
                markup=False,
            )


def scale(
    model: str = typer.Argument(..., help="The served model name (`raylm ps` lists them)."),
    replicas: int = typer.Argument(..., min=1, help="Replicas it should have."),
    endpoint: str = _ENDPOINT,
    admin_key: str | None = _ADMIN_KEY,
    wait: bool = typer.Option(True, help="Wait until exactly that many replicas are ready."),
    timeout: float = typer.Option(900.0, help="How long --wait waits, in seconds."),
) -> None:
    """Add or remove replicas of MODEL; a removed replica is drained before it stops."""
    with _client(endpoint, admin_key) as client:
        result = client.scale(model, replicas)
        for rid in result.added:
            err.print(f"[cyan]raylm[/cyan] starting {rid}")
        for rid in result.draining:
            err.print(f"[cyan]raylm[/cyan] draining {rid}, then stopping it")
        if wait:
            view = client.wait_scaled(model, replicas, timeout)
            out.print(f"{model}: {view.ready} replica(s) ready (was {result.before})")
        else:
            out.print(f"{model}: scaling from {result.before} to {result.after} replica(s)")


_FLAGS = {
    "min_replicas": "--min",
    "max_replicas": "--max",
    "target_in_flight_per_replica": "--target",
    "upscale_delay_s": "--upscale-delay",
    "downscale_delay_s": "--downscale-delay",
}


def autoscale(
    model: str = typer.Argument(..., help="The served model name (`raylm ps` lists them)."),
    min_replicas: int | None = typer.Option(None, "--min", help="Fewest replicas [default: 1]."),
    max_replicas: int | None = typer.Option(None, "--max", help="Most replicas."),
    target: float | None = typer.Option(
        None, "--target", help="Requests in flight or waiting per replica to aim for."
    ),
    upscale_delay: float | None = typer.Option(
        None, "--upscale-delay", help="Seconds the load must want more [default: 30]."
    ),
    downscale_delay: float | None = typer.Option(
        None, "--downscale-delay", help="Seconds the load must want fewer [default: 300]."
    ),
    off: bool = typer.Option(False, "--off", help="Stop autoscaling; the count stays."),
    endpoint: str = _ENDPOINT,
    admin_key: str | None = _ADMIN_KEY,
) -> None:
    """Scale MODEL's replicas with its load, between --min and --max (or stop: --off). On
    a model that autoscales already, the options not given keep their values."""
    given = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_in_flight_per_replica": target,
        "upscale_delay_s": upscale_delay,
        "downscale_delay_s": downscale_delay,
    }
    with _client(endpoint, admin_key) as client:
        settings: Autoscaling | None = None
        if not off:
            view = next((m for m in client.deployment().models if m.name == model), None)
            settings = _settings(
                model, view.autoscale.settings if view and view.autoscale else None, given
            )
        result = client.autoscale(model, settings)
    for rid in result.added:
        err.print(f"[cyan]raylm[/cyan] starting {rid}")
    for rid in result.draining:
        err.print(f"[cyan]raylm[/cyan] draining {rid}, then stopping it")
    now = f"{result.after} replica(s)" + (
        f", was {result.before}" if result.after != result.before else ""
    )
    what = f"autoscaling {settings.describe()}" if settings else "autoscaling off"
    out.print(f"{model}: {what} ({now})", highlight=False, markup=False)


def _settings(
    model: str, current: Autoscaling | None, given: dict[str, float | None]
) -> Autoscaling:
    """The settings asked for: `given` over the model's current ones, if it has any."""
    try:
        if current is not None:
            return current.merged(**given)
        return Autoscaling.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        where = [_FLAGS.get(str(err["loc"][0]) if err["loc"] else "", "") for err in e.errors()]
        problems = "; ".join(
            f"{flag}: {err['msg']}" if flag else str(err["msg"])
            for flag, err in zip(where, e.errors(), strict=True)
        )
        raise ConfigError(
            f"Cannot autoscale {model} so",
            why=problems,
            fix="Give --max and --target for a model that does not autoscale yet",
            command=f"raylm autoscale {model} --min 1 --max 4 --target 4",
        ) from None


def update(
    model: str = typer.Argument(..., help="The served model name (`raylm ps` lists them)."),
    model_path: str | None = typer.Option(
        None, "--model", help="The new version's model directory, on every node."
    ),
    engine_arg: list[str] = typer.Option(
        [], "--engine-arg", help="KEY=VALUE set over the current vLLM arguments (repeatable)."
    ),
    max_surge: int = typer.Option(1, min=0, help="New replicas started beyond the count."),
    max_unavailable: int | None = typer.Option(
        None,
        min=0,
        help="Old replicas drained before their replacement is ready [default: 0, or 1 "
        "when the cluster has no room for one more].",
    ),
    endpoint: str = _ENDPOINT,
    admin_key: str | None = _ADMIN_KEY,
    wait: bool = typer.Option(True, help="Wait until the rollout ends."),
    timeout: float = typer.Option(3600.0, help="How long --wait waits, in seconds."),
) -> None:
    """Roll MODEL to a new version, one replica at a time, proving each ready first."""
    try:
        request = UpdateRequest(
            model=model,
            model_path=model_path,
            engine_args=dict(parse_engine_arg(a) for a in engine_arg),
            max_surge=max_surge,
            max_unavailable=max_unavailable,
        )
    except ValidationError as e:
        raise ConfigError(
            f"Cannot update {model} so",
            why="; ".join(str(err["msg"]) for err in e.errors()),
            fix="Set what raylm owns with raylm's own commands (raylm scale for replicas)",
        ) from None
    with _client(endpoint, admin_key) as client:
        started = client.update(request)
        err.print(f"[cyan]raylm[/cyan] rolling {model} to version {started.version}")
        if not wait:
            return
        view = client.wait_rolled(
            model, timeout, lambda state: err.print(f"  {state}", highlight=False, markup=False)
        )
    out.print(f"{model}: version {view.version}, {view.ready} replica(s) ready")


def add(
    file: Path = typer.Option(..., "-f", "--file", help="The model's fields (a [[models]] entry)."),
    endpoint: str = _ENDPOINT,
    admin_key: str | None = _ADMIN_KEY,
    wait: bool = typer.Option(True, help="Wait until its replicas are ready."),
    timeout: float = typer.Option(900.0, help="How long --wait waits, in seconds."),
) -> None:
    """Serve one more model beside the others, planned on what they leave free."""
    spec = read_model_file(file)
    with _client(endpoint, admin_key) as client:
        result = client.add(spec)
        for rid in result.added:
            err.print(f"[cyan]raylm[/cyan] starting {rid}")
        if wait:
            view = client.wait_scaled(result.model, result.after, timeout)
            out.print(f"{result.model}: added, {view.ready} replica(s) ready")
        else:
            out.print(f"{result.model}: adding {result.after} replica(s)")


def remove(
    model: str = typer.Argument(..., help="The served model name (`raylm ps` lists them)."),
    endpoint: str = _ENDPOINT,
    admin_key: str | None = _ADMIN_KEY,
    wait: bool = typer.Option(True, help="Wait until its replicas are drained and stopped."),
    timeout: float = typer.Option(300.0, help="How long --wait waits, in seconds."),
) -> None:
    """Stop serving MODEL: its replicas are drained, then stopped; the others go on."""
    with _client(endpoint, admin_key) as client:
        result = client.remove(model)
        for rid in result.draining:
            err.print(f"[cyan]raylm[/cyan] draining {rid}, then stopping it")
        if wait:
            client.wait_gone(model, timeout)
        out.print(f"{model}: removed")


def register(app: typer.Typer) -> None:
    app.command("ps")(ps)
    app.command("scale")(scale)
    app.command("update")(update)
    app.command("autoscale")(autoscale)
    app.command("add")(add)
    app.command("remove")(remove)
