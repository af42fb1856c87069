"""The driver side of a sync: what `raylm model sync`, `verify`, `list` and `rm` call.

Owns choosing the nodes (`resolve_nodes`), starting one pinned agent per
node for the length of one operation (`_Agents`), the reference manifest every copy is
checked against, and collecting per-node results: verify results, sync reports and the
progress polled while a sync runs. Each sync hands its own `TransferSettings` to every
receiving agent with the call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raylm.cluster.nodes import alive_nodes
from raylm.errors import ClusterError, ModelError
from raylm.models.manifest import Manifest, VerifyResult
from raylm.models.store import ModelEntry, ModelStore
from raylm.models.sync.agent import agent_class
from raylm.models.sync.schema import NodeProgress, ReceiveRequest, SyncReport
from raylm.models.sync.transport import (
    CHUNK,
    PARALLEL_FILES,
    PIPELINE_DEPTH,
    TRANSPORTS,
    TransferSettings,
)

log = logging.getLogger(__name__)


def _node_ids() -> dict[str, str]:
    """{node IP: Ray node id} of every alive node."""
    return {n.ip: n.node_id for n in alive_nodes()}


def _spawn(node_id: str) -> Any:
    # Function-local: Ray reads its auth settings at import.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return (
        agent_class()
        .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        .remote()
    )


class _Agents:
    """One agent per node, killed on exit so no worker outlives the operation."""

    def __init__(self, ips: Sequence[str]) -> None:
        # Function-local: Ray reads its auth settings at import.
        import ray

        alive = _node_ids()
        unknown = [ip for ip in ips if ip not in alive]
        if unknown:
            raise ClusterError(
                f"Node(s) {', '.join(unknown)} are not alive in the Ray cluster",
                node=unknown[0],
                why=f"alive nodes: {', '.join(sorted(alive)) or 'none'}",
                fix="check the node with `raylm status`, or name only alive nodes",
                command="raylm status",
            )
        self.handles = {ip: _spawn(alive[ip]) for ip in ips}
        self._ray = ray

    def __enter__(self) -> _Agents:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles.values():
            try:
                self._ray.kill(h)
            except Exception as e:
                log.debug("agent already gone: %s", e)


def _reference(model: str | ModelEntry | Manifest, store: ModelStore | None) -> Manifest:
    """The manifest every node's copy is checked against: this node's, for a store name (the
    demo model's name imports it on first use, as `raylm serve` does)."""
    if isinstance(model, Manifest):
        return model
    entry = model if isinstance(model, ModelEntry) else (store or ModelStore()).resolve(model)
    if entry.manifest is None:
        raise ModelError(
            f"{entry.path} has no manifest, so its copies cannot be verified",
            model=entry.name,
            fix="register it in the store first",
            command=f"raylm model import {entry.path}",
        )
    return Manifest.model_validate_json(Path(entry.manifest).read_bytes())


def resolve_nodes(nodes: Sequence[str] | str | None) -> list[str]:
    """'all' / None -> every alive node; else the IPs given (checked later)."""
    if nodes is None or nodes == "all" or (not isinstance(nodes, str) and list(nodes) == ["all"]):
        return sorted(_node_ids())
    if isinstance(nodes, str):
        return [n.strip() for n in nodes.split(",") if n.strip()]
    return [n for n in nodes if n]


def verify_on_nodes(
    model: str | ModelEntry | Manifest,
    node_ips: Sequence[str] | None = None,
    *,
    full: bool = False,
    store: ModelStore | None = None,
    timeout: float = 3600.0,
) -> dict[str, VerifyResult]:
    """Check each node's copy of `model` against this node's manifest, in parallel.

    `full=False` trusts a node whose files still have the size and mtime they had at its
    last full hash (a stat per file) and hashes everything else; `full=True` hashes every
    file on every node. A node that is not alive gets a result with `error` set. A copy
    whose bytes all match but that lacks a manifest (placed by hand) is registered.
    Needs an attached Ray cluster (see `raylm.cluster.context.ensure_attached`).
    """
    # Function-local: Ray reads its auth settings at import.
    import ray

    ref = _reference(model, store)
    ips = resolve_nodes(node_ips)
    alive = _node_ids()
    out: dict[str, VerifyResult] = {
        ip: VerifyResult(name=ref.name, node=ip, path="", ok=False, error="node is not alive")
        for ip in ips
        if ip not in alive
    }
    live = [ip for ip in ips if ip in alive]
    if not live:
        return out
    with _Agents(live) as agents:
        refs = {ip: h.verify.remote(ref, full) for ip, h in agents.handles.items()}
        for ip, r in refs.items():
            try:
                out[ip] = ray.get(r, timeout=timeout)
            except Exception as e:
                out[ip] = VerifyResult(
                    name=ref.name, node=ip, path="", ok=False, error=f"{type(e).__name__}: {e}"
                )
    return {ip: out[ip] for ip in ips}


def sync_model(
    model: str | ModelEntry | Manifest,
    node_ips: Sequence[str] | None = None,
    *,
    source_ip: str | None = None,
    store: ModelStore | None = None,
    parallel_files: int = PARALLEL_FILES,
    limit_bytes_per_s: float | None = None,
    chunk_bytes: int = CHUNK,
    pipeline_depth: int = PIPELINE_DEPTH,
    transport: str = "auto",
    on_progress: Callable[[dict[str, NodeProgress]], None] | None = None,
    poll_s: float = 0.5,
) -> dict[str, SyncReport]:
    """Copy `model` from the source node (default: this process's node) to the others.

    The source copy is verified first (stat against its stamp, else a full hash); each
    receiving node gets only the files it lacks or has wrong. Returns one report per
    receiving node; a node that fails (full disk, dead) does not stop the others.
    """
    # Function-local: Ray reads its auth settings at import.
    import ray

    if transport not in TRANSPORTS:
        raise ModelError(
            f"Unknown transport {transport!r}", fix=f"use one of {', '.join(TRANSPORTS)}"
        )
    ref = _reference(model, store)
    src_ip = source_ip or str(ray.util.get_node_ip_address())
    targets = [ip for ip in resolve_nodes(node_ips) if ip != src_ip]
    with _Agents([src_ip, *targets]) as agents:
        src = agents.handles[src_ip]
        check: VerifyResult = ray.get(src.verify.remote(ref, False))
        if not check.ok:
            raise ModelError(
                f"The source copy of {ref.name} on {src_ip} is not intact",
                model=ref.name,
                why=check.summary(),
                fix="repair the source first (re-import or re-pull it)",
                command=f"raylm model verify {ref.name}",
            )
        if not targets:
            return {}
        # One request for this sync, sent with each call: the agents keep no settings.
        req = ReceiveRequest(
            ref=ref,
            settings=TransferSettings(
                parallel_files=parallel_files,
                limit_bytes_per_s=limit_bytes_per_s,
                chunk_bytes=chunk_bytes,
                pipeline_depth=pipeline_depth,
                transport=transport,
            ),
        )
        running = {ip: agents.handles[ip].receive.remote(src, req) for ip in targets}
        reports: dict[str, SyncReport] = {}
        pending = dict(running)
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=poll_s)
            for ip, r in list(pending.items()):
                if r in ready:
                    try:
                        reports[ip] = ray.get(r)
                    except Exception as e:
                        reports[ip] = SyncReport(
                            node=ip, ok=False, error=f"{type(e).__name__}: {e}"
                        )
                    del pending[ip]
            if on_progress is not None:
                prog: dict[str, NodeProgress] = {}
                for ip in targets:
                    if ip in pending:
                        try:
                            asked = agents.handles[ip].progress.remote(ref.name)
                            prog[ip] = ray.get(asked, timeout=5)
                        except Exception:
                            prog[ip] = NodeProgress(node=ip, phase="unknown")
                    else:
                        rep = reports[ip]
                        prog[ip] = NodeProgress(
                            node=ip,
                            bytes_done=rep.bytes_sent,
                            bytes_total=rep.bytes_sent,
                            files_done=len(rep.files_sent),
                            files_total=len(rep.files_sent),
                            phase="done" if rep.ok else "failed",
                        )
                on_progress(prog)
        ray.get(src.close_files.remote(ref))
        return {ip: reports[ip] for ip in targets}


def list_on_nodes(node_ips: Sequence[str] | None = None) -> dict[str, list[ModelEntry]]:
    """Every node's store listing (entries with that node's `verified`)."""
    # Function-local: Ray reads its auth settings at import.
    import ray

    ips = resolve_nodes(node_ips)
    with _Agents(ips) as agents:
        refs = {ip: h.entries.remote() for ip, h in agents.handles.items()}
        return {ip: ray.get(r) for ip, r in refs.items()}


def remove_on_nodes(name: str, node_ips: Sequence[str] | None = None) -> dict[str, bool]:
    """Remove `name` from every node's store; {ip: whether there was something to remove}."""
    # Function-local: Ray reads its auth settings at import.
    import ray

    ips = resolve_nodes(node_ips)
    with _Agents(ips) as agents:
        refs = {ip: h.remove.remote(name) for ip, h in agents.handles.items()}
        return {ip: ray.get(r) for ip, r in refs.items()}
