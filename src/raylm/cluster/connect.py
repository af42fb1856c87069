"""Attach this process to a Ray cluster, or start a private single-node one for a serve run."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass

from raylm.errors import ClusterError

logger = logging.getLogger(__name__)

NAMESPACE = "raylm"


@dataclass
class RayConnection:
    """How this process is attached to Ray, and whether raylm owns the cluster."""

    address: str
    started_here: bool

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            # For a cluster we started, shutdown() also stops its GCS and raylet.
            ray.shutdown()


def connect(address: str | None) -> RayConnection:
    """Attach to `address`, $RAY_ADDRESS, or the cluster `raylm up`/`join` started on this
    node; with none of them, start a private single-node cluster (token auth, loopback).

    Ray reads its auth settings when it is first imported, so call this before anything
    in the process imports ray.
    """
    from raylm.cluster.bringup import read_state, token_path

    state = read_state()
    if address or os.environ.get("RAY_ADDRESS") or state is not None:
        if state is not None and state.auth and not os.environ.get("RAY_AUTH_TOKEN"):
            os.environ.setdefault("RAY_AUTH_MODE", "token")
            os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(token_path()))
        return _attach(address)
    # A private cluster for this run: loopback only, no dashboard, token auth on.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray

    # ray.init runs off the main thread (the event loop keeps answering); the runner owns
    # the signals, so Ray's note that it could not install its own is noise.
    logging.getLogger("ray._private.worker").setLevel(logging.ERROR)
    try:
        ctx = ray.init(
            namespace=NAMESPACE,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except Exception as e:
        raise ClusterError(
            "Could not start a local Ray cluster",
            why=f"{type(e).__name__}: {e}",
            fix="Check free memory and /tmp space, or attach to a running cluster with --address",
        ) from None
    return RayConnection(address=str(ctx.address_info.get("gcs_address", "")), started_here=True)


def _attach(address: str | None) -> RayConnection:
    from raylm.cluster.pinned import attach

    # attach() turns a failure into a ClusterError that says what to run.
    return RayConnection(address=attach(address), started_here=False)
