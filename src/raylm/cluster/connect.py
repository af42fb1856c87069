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
    """Attach to `address` (or RAY_ADDRESS); without either, start a local token-auth cluster.

    Ray reads its auth settings when it is first imported, so call this before anything
    in the process imports ray.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # A private cluster for this run: loopback only, no dashboard, token auth on.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        if os.environ["RAY_AUTH_MODE"] == "token":
            os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray

    # ray.init runs off the main thread (the event loop keeps answering); the runner owns
    # the signals, so Ray's note that it could not install its own is noise.
    logging.getLogger("ray._private.worker").setLevel(logging.ERROR)
    if address:
        try:
            ctx = ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ClusterError(
                f"Could not attach to the Ray cluster at {address}",
                why=str(e).splitlines()[0] if str(e) else type(e).__name__,
                fix="Check that the head is up and this node can reach it, "
                "and that RAY_AUTH_TOKEN matches the head's token",
                command="raylm status",
            ) from None
        return RayConnection(
            address=str(ctx.address_info.get("gcs_address", address)), started_here=False
        )
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
