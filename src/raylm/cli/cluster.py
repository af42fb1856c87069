"""`raylm up`, `join`, `status`, `doctor`, `down`: parsing and printing only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from raylm.errors import ClusterError

console = Console()
err = Console(stderr=True)


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
) -> None:
    """Start this node as the head of a new Ray cluster and print the join command."""
    from raylm.cluster import bringup

    with console.status("Starting the Ray head...", spinner="dots") if not as_json else _null():
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
    st = res.state
    console.print(
        f"[green]Ray head started[/green] on {st.iface} {st.node_ip}, GCS {st.address}, "
        f"dashboard {st.dashboard_host}:{st.ports.dashboard}, "
        f"token auth {'on' if st.auth else '[red]OFF[/red]'}."
    )
    console.print(f"Open TCP {st.ports.firewall_rule()} between the nodes.")
    console.print("On every worker node run:")
    print(res.join_command)


def _join(
    head: str = typer.Argument(..., help="The head: IP or IP:PORT (GCS port, default 6379)."),
    token: str | None = typer.Option(
        None, "--token", help="Cluster token printed by `raylm up` (or $RAYLM_CLUSTER_TOKEN)."
    ),
    node_ip: str | None = typer.Option(None, "--node-ip", help="Use the interface with this IP."),
    iface: str | None = typer.Option(None, "--iface", help="Use this network interface."),
    force: bool = typer.Option(False, "--force", help="Join even if versions differ."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", help="CPUs Ray may use here."),
    num_gpus: int | None = typer.Option(None, "--num-gpus", help="GPUs (default: NVML count)."),
    temp_dir: Path | None = typer.Option(None, "--temp-dir", help="Ray temp dir of this node."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Join this node to a cluster started with `raylm up`."""
    from raylm.cluster import bringup

    tok = token or os.environ.get(bringup.TOKEN_ENV) or None
    pre = bringup.join_preflight(head, token=tok, node_ip=node_ip, iface=iface)
    if pre.diffs and not as_json:
        t = Table(title=f"Versions: head {pre.address} vs this node")
        for c in ("what", "head", "this node", "blocks", "fix"):
            t.add_column(c)
        for d in pre.diffs:
            t.add_row(d.field, d.expected, d.actual, "yes" if d.blocking else "no", d.fix)
        err.print(t)
    if pre.fingerprint_error and not force:
        raise ClusterError(pre.fingerprint_error, command=f"raylm join {head} --token TOKEN")
    if pre.blocking and not force:
        raise bringup.mismatch_error(pre.address, pre.blocking)
    with console.status("Starting the Ray worker...", spinner="dots") if not as_json else _null():
        res = bringup.join(
            head,
            token=tok,
            node_ip=node_ip,
            iface=iface,
            force=force,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            temp_dir=temp_dir,
        )
    if as_json:
        print(json.dumps(res.model_dump(), indent=2))
        return
    st = res.state
    console.print(f"[green]Joined[/green] {st.address} as {st.node_ip} ({st.iface}).")


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


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the raylm app."""
    app.command("up")(_up)
    app.command("join")(_join)
    app.command("down")(_down)
