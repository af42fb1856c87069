"""`raylm up`, `join`, `status`, `doctor`, `down`: parsing and printing only."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raylm.units import gib_text

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


BLOCK_HELP = (
    "Stay in the foreground until SIGTERM, then stop this node (a container's main "
    "process; on by itself when raylm is a container's first process)."
)


def _up(
    node_ip: str | None = typer.Option(None, "--node-ip", help="Use the interface with this IP."),
    iface: str | None = typer.Option(None, "--iface", help="Use this network interface."),
    dashboard_host: str = typer.Option(
        "127.0.0.1", "--dashboard-host", help="Bind the dashboard here (0.0.0.0 exposes it)."
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Turn Ray token authentication off (unsafe on a network)."
    ),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="CPUs Ray may use here."),
    num_gpus: int | None = typer.Option(None, "--num-gpus", help="GPUs (default: NVML count)."),
    temp_dir: Path | None = typer.Option(None, "--temp-dir", help="Ray temp dir of this node."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    block: bool = typer.Option(False, "--block", help=BLOCK_HELP),
) -> None:
    """Start this node as the head of a new Ray cluster and print the join command."""
    from raylm.cluster import bringup

    with (
        console.status("Starting the Ray head...", spinner="dots")
        if not as_json
        else _quiet_stdout()
    ):
        res = bringup.up(
            node_ip=node_ip,
            iface=iface,
            dashboard_host=dashboard_host,
            auth=not no_auth,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            temp_dir=temp_dir,
        )
    if as_json:
        print(json.dumps(res.model_dump(), indent=2))
        return
    _print_notes(res.notes)
    st = res.state
    console.print(
        f"[green]Ray head started[/green] on {st.iface} {st.node_ip}, GCS {st.address}, "
        f"dashboard {st.dashboard_host}:{st.ports.dashboard}, "
        f"token auth {'on' if st.auth else '[red]OFF[/red]'}."
    )
    console.print(f"Open TCP {st.ports.firewall_rule()} between the nodes.")
    ufw = st.ports.ufw_command("OTHER_NODE_IP")
    console.print(f"With ufw, on each node, once per other node: {ufw}", highlight=False)
    console.print("On every worker node run:")
    print(res.join_command, flush=True)
    _hold_if(block, st)


def _join(
    head: str = typer.Argument(..., help="The head: IP or IP:PORT (GCS port, default 6379)."),
    token: str | None = typer.Option(
        None,
        "--token",
        help="Cluster token printed by `raylm up` (or $RAYLM_CLUSTER_TOKEN; a node that "
        "joined before reuses its kept token).",
    ),
    node_ip: str | None = typer.Option(None, "--node-ip", help="Use the interface with this IP."),
    iface: str | None = typer.Option(None, "--iface", help="Use this network interface."),
    force: bool = typer.Option(False, "--force", help="Join even if versions differ."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="CPUs Ray may use here."),
    num_gpus: int | None = typer.Option(None, "--num-gpus", help="GPUs (default: NVML count)."),
    temp_dir: Path | None = typer.Option(None, "--temp-dir", help="Ray temp dir of this node."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    block: bool = typer.Option(False, "--block", help=BLOCK_HELP),
) -> None:
    """Join this node to a cluster started with `raylm up` (the line it printed)."""
    from raylm.cluster import bringup

    try:
        with (
            console.status("Joining the cluster...", spinner="dots")
            if not as_json
            else _quiet_stdout()
        ):
            res = bringup.join(
                head,
                token=token,
                node_ip=node_ip,
                iface=iface,
                force=force,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                temp_dir=temp_dir,
            )
    except bringup.VersionMismatch as e:
        if not as_json:
            _print_diffs(head, e.diffs)
        raise
    if as_json:
        print(json.dumps(res.model_dump(), indent=2))
        return
    _print_diffs(head, res.diffs)
    _print_notes(res.notes)
    st = res.state
    console.print(f"[green]Joined[/green] {st.address} as {st.node_ip} ({st.iface}).")
    _hold_if(block, st)


def _hold_if(block: bool, state: Any) -> None:
    from raylm.cluster import foreground

    if not foreground.must_block(block):
        return
    console.print("Holding this node in the foreground; SIGTERM or Ctrl+C stops it.")
    why, pids = foreground.hold_then_stop(state)
    console.print(f"{why}: stopped {len(pids)} processes raylm started on this node.")


def _print_diffs(head: str, diffs: list[Any]) -> None:
    if not diffs:
        return
    t = Table(title=f"Versions: head {head} vs this node")
    for c in ("what", "head", "this node", "blocks", "fix"):
        t.add_column(c)
    for d in diffs:
        t.add_row(d.field, d.expected, d.actual, "yes" if d.blocking else "no", escape(d.fix))
    err.print(t)


def _print_notes(notes: list[str]) -> None:
    for n in notes:
        err.print(f"[yellow]note[/yellow]: {escape(n)}", highlight=False)


def _down(as_json: bool = typer.Option(False, "--json", help="Print the pids as JSON.")) -> None:
    """Stop the Ray processes raylm started on this node (by pid, nothing else)."""
    from raylm.cluster import bringup

    pids = bringup.down()
    if as_json:
        print(json.dumps({"stopped_pids": pids}))
    elif pids:
        console.print(f"Stopped {len(pids)} processes raylm started on this node.")
    else:
        console.print("raylm runs nothing on this node.")


def _gib(b: float) -> str:
    return gib_text(b) if b else "-"


def _status(
    address: str | None = typer.Option(
        None, "--address", help="GCS address (default: this node's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the inventory as JSON."),
    wait_nodes: int | None = typer.Option(
        None, "--wait-nodes", min=1, help="First wait until this many nodes are alive."
    ),
    timeout: float = typer.Option(900, "--timeout", help="Seconds --wait-nodes waits at most."),
) -> None:
    """Every node: IP, role, alive, CPUs, memory, model-store disk, GPUs, versions, raylm actors."""
    from raylm.cluster.context import ensure_attached
    from raylm.cluster.inventory import cluster_inventory
    from raylm.cluster.nodes import wait_for_nodes

    if wait_nodes:
        with err.status(f"Waiting for {wait_nodes} node(s)...", spinner="dots"):
            ensure_attached(address)
            wait_for_nodes(wait_nodes, timeout)
    with err.status("Reading every node...", spinner="dots") if not as_json else _quiet_stdout():
        inv = cluster_inventory(address)
    if as_json:
        print(json.dumps(inv.model_dump(), indent=2))
        return
    versions = {_versions(n.versions) for n in inv.nodes if n.versions}
    differ = len(versions) > 1
    alive = sum(n.alive for n in inv.nodes)
    console.print(
        f"raylm cluster {inv.address}: {alive} of {len(inv.nodes)} node(s) alive"
        + (f"; on every node: {next(iter(versions))}" if len(versions) == 1 else ""),
        highlight=False,
        soft_wrap=True,
    )
    t = Table()
    for c in ("node", "role", "alive", "CPUs", "memory", "store free", "/dev/shm"):
        # IPs and figures are what people read and grep: never cut or wrapped.
        t.add_column(c, no_wrap=True)
    t.add_column("GPUs")
    if differ:
        t.add_column("versions")
    t.add_column("raylm runs")
    for n in inv.nodes:
        gpus = (
            "\n".join(
                f"{g.name} {_gib(g.memory_used_bytes)}/{_gib(g.memory_total_bytes)} "
                f"{g.utilization_pct if g.utilization_pct is not None else '?'}%"
                for g in n.gpus
            )
            or "-"
        )
        row = [
            n.ip,
            n.role,
            "[green]yes[/green]" if n.alive else "[red]no[/red]",
            f"{n.cpus:g}",
            _gib(n.memory_bytes),
            _gib(n.disk_free_bytes),
            _gib(n.shm_bytes),
            gpus,
        ]
        if differ:
            row.append(_versions(n.versions) if n.versions else "-")
        row.append(", ".join(n.raylm_actors) or ("-" if not n.error else f"[red]{n.error}[/red]"))
        t.add_row(*row)
    console.print(t)


def _versions(v: Any) -> str:
    return f"python {v.python}, ray {v.ray}, vllm {v.vllm or '-'}, torch {v.torch or '-'}"


def _doctor(
    address: str | None = typer.Option(
        None, "--address", help="GCS address (default: this node's)."
    ),
    nccl: bool = typer.Option(
        False, "--nccl", help="Also run a real all-reduce (NCCL, or Gloo on CPU)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Also check that this model's planned layout fits the cluster now."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every node (versions, network, ports, /dev/shm, disk, GPUs, auth, clocks)."""
    from raylm.cluster.doctor import run_doctor

    with err.status("Checking every node...", spinner="dots") if not as_json else _quiet_stdout():
        rep = run_doctor(address, nccl=nccl, model=model)
    if as_json:
        print(json.dumps(rep.model_dump(), indent=2))
    else:
        t = Table(title=f"raylm doctor {rep.address}")
        for col in ("status", "check", "node", "finding", "fix"):
            t.add_column(col)
        color = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}
        for c in rep.checks:
            t.add_row(
                f"[{color[c.status]}]{c.status}[/]",
                c.check,
                c.node,
                escape(c.finding),
                escape(c.fix),
            )
        console.print(t)
        n_fail = sum(c.status == "FAIL" for c in rep.checks)
        n_warn = sum(c.status == "WARN" for c in rep.checks)
        console.print(f"{n_fail} FAIL, {n_warn} WARN, {len(rep.checks) - n_fail - n_warn} PASS")
    if rep.failed:
        # SystemExit: typer.Exit under standalone_mode=False becomes a return value, exit 0.
        raise SystemExit(1)


def _debug_bundle(
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Archive to write [default: ./raylm-debug-<time>-<host>.tar.gz].",
    ),
    file: Path | None = typer.Option(
        None, "-f", "--file", help="The deployment's spec (raylm.toml), its keys redacted."
    ),
    address: str | None = typer.Option(
        None, "--address", help="GCS address (default: this node's)."
    ),
) -> None:
    """Gather one .tar.gz from every node, over Ray: versions, doctor, logs, GPUs or CPUs,
    network, environment; every token and key redacted."""
    from raylm.cluster.bundle import collect_bundle, read_spec

    spec_text, secrets = read_spec(file) if file is not None else (None, [])
    with err.status("Gathering from every node...", spinner="dots"):
        got = collect_bundle(output, spec_text, secrets, address)
    for ip, why in got.missing.items():
        err.print(f"[yellow]raylm[/yellow] nothing from {ip}: {escape(why)}")
    console.print(
        f"wrote {got.path}: {len(got.nodes)} node(s), {got.size_bytes / 1024:.0f} KiB, "
        f"{got.redacted} secret(s) redacted",
        highlight=False,
    )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to stderr while Ray runs, so --json stdout stays pure JSON.

    Ray's core (C++) and its subprocess output write to fd 1 directly, past sys.stdout.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the raylm app."""
    app.command("up")(_up)
    app.command("join")(_join)
    app.command("status")(_status)
    app.command("doctor")(_doctor)
    app.command("debug-bundle")(_debug_bundle)
    app.command("down")(_down)
