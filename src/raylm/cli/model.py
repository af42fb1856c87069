"""`raylm model ...`: pull, import, list, rm, verify and sync models (parsing and printing only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from raylm.cluster.context import ensure_attached
from raylm.errors import ModelError
from raylm.models.hub import pull
from raylm.models.listing import model_rows
from raylm.models.store import ModelStore
from raylm.models.sync import (
    NodeProgress,
    list_on_nodes,
    remove_on_nodes,
    resolve_nodes,
    sync_model,
    verify_on_nodes,
)
from raylm.units import size_text

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

model_app = typer.Typer(
    name="model",
    help="The model store: pull, import, list, remove, verify and sync models to every node.",
    no_args_is_help=True,
)

ADDRESS_HELP = "Ray cluster address (default: RAY_ADDRESS, else the cluster this node joined)."
NODES_HELP = "'all', or comma-separated node IPs."


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")


def _gib(n: int) -> str:
    return size_text(n)


def _dump(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


@model_app.command("list")
def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    nodes: str | None = typer.Option(None, "--nodes", help=f"Also list on nodes: {NODES_HELP}"),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Models in this node's store (with --nodes: where each is present and verified)."""
    entries = ModelStore().list_models()
    per_node: dict[str, list[Any]] = {}
    if nodes:
        ensure_attached(address)
        per_node = list_on_nodes(resolve_nodes(nodes))
    rows = model_rows(entries, per_node)
    if as_json:
        _dump(rows)
        return
    if not rows:
        err.print("No models in the store. Try: raylm model import PATH  |  raylm model pull REPO")
        return
    t = Table("name", "source", "revision", "size", "verified", "path")
    if per_node:
        t.add_column("nodes")
    for r in rows:
        cells = [
            r["name"],
            r["source"],
            (r["revision"] or "")[:24],
            _gib(r["size_bytes"]),
            "yes" if r["verified"] else "no",
            r["path"],
        ]
        if per_node:
            cells.append(", ".join(f"{ip}:{s}" for ip, s in r["nodes"].items()))
        t.add_row(*cells)
    out.print(t)


@model_app.command("import")
def import_cmd(
    path: Path = typer.Argument(..., help="A Hugging Face-format model directory or a .gguf file."),
    name: str | None = typer.Option(None, "--name", help="Name in the store."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Register a model directory in place, or convert a GGUF file into the store."""
    if not path.expanduser().exists():
        raise ModelError(f"{path} does not exist", fix="give a model directory or a .gguf file")
    e = ModelStore().import_path(path, name)
    if as_json:
        _dump(e.model_dump(mode="json"))
    else:
        out.print(f"[green]Imported[/green] {e.name} ({_gib(e.size_bytes)}) at {e.path}")


@model_app.command("pull")
def pull_cmd(
    repo: str = typer.Argument(..., help="Hub repository id, e.g. Qwen/Qwen2.5-0.5B-Instruct."),
    source: str = typer.Option("hf", "--source", help="hf (honors HF_ENDPOINT) or modelscope."),
    revision: str | None = typer.Option(None, "--revision", help="Branch, tag or commit."),
    include: list[str] | None = typer.Option(
        None, "--include", help="Only files matching this pattern (repeatable), e.g. '*.json'."
    ),
    name: str | None = typer.Option(None, "--name", help="Name in the store (default Org--Repo)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Download a model from a hub, check every file against the hub's checksums."""
    if source not in ("hf", "modelscope"):
        raise ModelError(f"Unknown --source {source!r}", fix="use --source hf or modelscope")
    e = pull(
        repo,
        source=source,  # type: ignore[arg-type]
        revision=revision,
        include=include,
        name=name,
        store=ModelStore(),
    )
    if as_json:
        _dump(e.model_dump(mode="json"))
    else:
        out.print(f"[green]Pulled[/green] {e.name} @ {e.revision[:12]} ({_gib(e.size_bytes)})")


@model_app.command("rm")
def rm_cmd(
    name: str = typer.Argument(..., help="Model name in the store."),
    all_nodes: bool = typer.Option(False, "--all-nodes", help="Remove it from every node."),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
) -> None:
    """Remove a model (files registered in place are kept; only the manifest goes)."""
    if all_nodes:
        ensure_attached(address)
        done = remove_on_nodes(name)
        if not any(done.values()):
            raise ModelError(f"Model {name} is on no node", model=name, command="raylm model list")
        for ip, removed in done.items():
            out.print(f"{ip}: {'removed' if removed else 'not present'}")
        return
    if not ModelStore().remove(name):
        raise ModelError(
            f"Model {name} is not in the store", model=name, command="raylm model list"
        )
    out.print(f"Removed {name}")


@model_app.command("verify")
def verify_cmd(
    name: str = typer.Argument(..., help="Model name in the store."),
    nodes: str | None = typer.Option(None, "--nodes", help=f"Check on nodes: {NODES_HELP}"),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Hash every file (on each node with --nodes) and name every missing or differing one."""
    if nodes:
        ensure_attached(address)
        results = verify_on_nodes(name, nodes, full=True)
    else:
        r = ModelStore().verify(name)
        results = {r.node: r}
    if as_json:
        _dump({ip: r.model_dump(mode="json") for ip, r in results.items()})
    else:
        for r in results.values():
            rate = r.bytes_hashed / r.seconds / 1e9 if r.seconds > 0 else 0.0
            style = "green" if r.ok else "red"
            out.print(f"[{style}]{r.summary()}[/{style}] [dim]({rate:.2f} GB/s)[/dim]")
            for p in r.problems:
                out.print(f"   {p.path}: {p.problem} {p.detail}")
    bad = [ip for ip, r in results.items() if not r.ok]
    if bad:
        what = "; ".join(results[ip].summary() for ip in bad)
        raise ModelError(
            f"{name} is missing or differs on {', '.join(bad)}",
            model=name,
            why=what,
            fix="copy a verified copy to those nodes",
            command=f"raylm model sync {name} --nodes {','.join(bad)}",
        )


@model_app.command("sync")
def sync_cmd(
    name: str = typer.Argument(..., help="Model name in this node's store."),
    nodes: str = typer.Option("all", "--nodes", help=NODES_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    limit_rate: float | None = typer.Option(
        None, "--limit-rate", help="Cap each node's transfer rate, in MB/s.", min=0.001
    ),
    transport: str = typer.Option(
        "auto",
        "--transport",
        help="auto (a direct stream between the agents, else Ray objects), stream, "
        "or object-store (no extra port between nodes).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Copy this node's verified copy to the other nodes through Ray; only what is missing."""
    ensure_attached(address)
    with err.status(f"Checking {name} in this node's store...", spinner="dots"):
        entry = ModelStore().resolve(name)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=as_json,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def show(prog: dict[str, NodeProgress]) -> None:
            for ip, p in prog.items():
                if ip not in tasks:
                    tasks[ip] = bar.add_task(ip, total=None)
                bar.update(
                    tasks[ip],
                    total=p.bytes_total or None,
                    completed=p.bytes_done,
                    description=f"{ip} {p.phase} {p.files_done}/{p.files_total} files",
                )

        reports = sync_model(
            entry,
            nodes,
            limit_bytes_per_s=limit_rate * 1e6 if limit_rate else None,
            transport=transport,
            on_progress=show,
        )
    if as_json:
        _dump({ip: r.model_dump(mode="json") for ip, r in reports.items()})
    else:
        if not reports:
            out.print("No other node to sync to.")
        for r in reports.values():
            if r.ok:
                out.print(
                    f"[green]{r.node}[/green]: {len(r.files_sent)} file(s) sent "
                    f"({_gib(r.bytes_sent)}), {r.files_kept} already there, {r.seconds:.1f} s"
                )
            else:
                out.print(f"[red]{r.node}[/red]: {r.error}")
    bad = [r for r in reports.values() if not r.ok]
    if bad:
        raise ModelError(
            f"Sync of {name} failed on {', '.join(r.node for r in bad)}",
            model=name,
            why=bad[0].error,
            fix="fix the cause on those nodes, then run the same sync again (it resumes)",
            command=f"raylm model sync {name} --nodes {','.join(r.node for r in bad)}",
        )
