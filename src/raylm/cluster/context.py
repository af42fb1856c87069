"""The cluster this node belongs to: the one owner of its address, its token, and this
node's IP and interface, and the one place a process attaches to Ray.

Every command that talks to Ray comes through here (`status`, `doctor`, `model ... --nodes`,
`serve`, `plan --cluster live`), so they all resolve the cluster the same way:

1. the address: the explicit flag, then `RAY_ADDRESS`, then what `raylm up`/`join` recorded
   on this node;
2. the token: the one kept with that record, else `RAYLM_CLUSTER_TOKEN`, else whatever Ray
   setting the user exported;
3. this node's IP, interface and Ray temp dir: from the record.

Ray reads its auth settings once, when it is first imported, so `attach` applies them and
then tells an already imported Ray to read them again. A record whose Ray node no longer runs
(a reboot, `kill -9`) is stale: it is named with the command that fixes it, never trusted.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raylm.cluster import record
from raylm.cluster.ray_process import RAY_AUTH_VARS
from raylm.errors import ClusterError

log = logging.getLogger(__name__)

NAMESPACE = "raylm"
TOKEN_ENV = "RAYLM_CLUSTER_TOKEN"
DEFAULT_GCS_PORT = 6379

TokenSource = Literal["record", "env", "user", "none"]


class ClusterContext(BaseModel):
    """The cluster a command works on, resolved once (see the module's order)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(description="GCS address of the cluster, host:port.")
    source: Literal["flag", "env", "record"] = Field(
        description="Where the address came from: --address, RAY_ADDRESS, or this node's record."
    )
    node_ip: str | None = Field(
        description="This node's IP in the cluster (from the record); None lets Ray find it."
    )
    iface: str | None = Field(description="The interface holding node_ip, when recorded.")
    temp_dir: str | None = Field(description="Ray's temp dir on this node, when recorded.")
    token_source: TokenSource = Field(
        description="record: the token kept by up/join; env: RAYLM_CLUSTER_TOKEN; "
        "user: RAY_AUTH_* the user exported; none: no token (auth off)."
    )
    auth: bool = Field(description="Whether the cluster expects a token.")


def split_address(
    address: str, default_port: int = DEFAULT_GCS_PORT, what: str = "cluster address"
) -> tuple[str, int]:
    """(host, port) of 'HOST' or 'HOST:PORT'; ClusterError naming `what` when malformed."""
    host, _, port = address.strip().rpartition(":") if ":" in address else (address, "", "")
    host = host.strip() or ""
    if not host:
        raise ClusterError(f"Bad {what} {address!r}", fix="Use HEAD_IP or HEAD_IP:PORT")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ClusterError(
            f"Bad port in {what} {address!r}", fix="Use HEAD_IP or HEAD_IP:PORT"
        ) from None


def same_cluster(a: str, b: str) -> bool:
    """Whether two GCS addresses name the same cluster."""
    ha, pa = split_address(a)
    hb, pb = split_address(b)
    if pa != pb:
        return False
    if ha == hb:
        return True
    try:
        return socket.gethostbyname(ha) == socket.gethostbyname(hb)
    except OSError:
        return False


def resolve(address: str | None = None) -> ClusterContext | None:
    """The cluster this node belongs to, or None when nothing names one."""
    state = record.read_state()
    env_address = os.environ.get("RAY_ADDRESS") or None
    if address:
        chosen, source = address, "flag"
    elif env_address:
        chosen, source = env_address, "env"
    elif state is not None:
        chosen, source = state.address, "record"
    else:
        return None
    if chosen == "auto":
        if state is None:
            raise ClusterError(
                "RAY_ADDRESS=auto names no cluster on this node",
                why="raylm started no Ray node here",
                fix="Join the cluster first, or give the head's address",
                command="raylm join HEAD_IP:6379 --token TOKEN",
            )
        chosen = state.address
    host, port = split_address(chosen)
    chosen = f"{host}:{port}"
    mine = state if state is not None and same_cluster(state.address, chosen) else None
    if mine is not None and not record.is_live(mine):
        raise record.stale_error(mine)
    token: TokenSource
    if mine is not None and mine.auth and record.token_path().exists():
        token = "record"
    elif os.environ.get(TOKEN_ENV):
        token = "env"
    elif os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        token = "user"
    else:
        token = "none"
    return ClusterContext(
        address=chosen,
        source=source,  # type: ignore[arg-type]
        node_ip=mine.node_ip if mine else None,
        iface=mine.iface if mine else None,
        temp_dir=mine.temp_dir if mine else None,
        token_source=token,
        auth=mine.auth if mine else token != "none",
    )


def require(address: str | None = None) -> ClusterContext:
    """Like `resolve`, but a ClusterError that says what to run when nothing names a cluster."""
    ctx = resolve(address)
    if ctx is None:
        raise ClusterError(
            "No Ray cluster to attach to",
            why="no --address, no RAY_ADDRESS, and this node never ran `raylm up` or `raylm join`",
            fix="Start a cluster on this node, or join one with the line `raylm up` printed",
            command="raylm up",
        )
    return ctx


def apply_auth(*, token: str | None = None, token_path: str | None = None) -> None:
    """Give this process the Ray auth settings for `token` (or the file holding it), or turn
    auth off when neither is given, and make an already imported Ray read them again."""
    for var in RAY_AUTH_VARS:
        os.environ.pop(var, None)
    if token_path:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    elif token:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = token
    else:
        os.environ["RAY_AUTH_MODE"] = "disabled"
    _reload_ray_auth()


def _reload_ray_auth() -> None:
    # Ray caches RAY_AUTH_* in its C++ config and token loader when first imported.
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _apply_context_auth(ctx: ClusterContext) -> None:
    if ctx.token_source == "record":
        apply_auth(token_path=str(record.token_path()))
    elif ctx.token_source == "env":
        apply_auth(token=os.environ[TOKEN_ENV])
    elif ctx.token_source == "user":
        _reload_ray_auth()  # the user's own RAY_AUTH_* settings stand
    else:
        apply_auth()


def check_reachable(ctx: ClusterContext, timeout: float = 5.0) -> None:
    """Fail in seconds, with the reason, where ray.init would retry for 20-40 s: the GCS
    port does not answer, or the GCS refuses this node's token."""
    host, port = split_address(ctx.address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(
            f"No Ray cluster answers at {ctx.address}",
            why=f"{type(e).__name__}: {e}",
            fix="Check that the head runs (`raylm status` on the head) and that TCP "
            f"{port} is open from this node",
            command=f"nc -vz {host} {port}",
        ) from None
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    try:
        GcsClient(address=ctx.address).internal_kv_get(b"probe", b"raylm", timeout=timeout)
    except Exception as e:
        if "auth" in type(e).__name__.lower() or "InvalidAuthToken" in str(e):
            where = {
                "record": f"the token kept in {record.token_path()}",
                "env": f"${TOKEN_ENV}",
                "user": "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH",
                "none": "no token",
            }[ctx.token_source]
            raise ClusterError(
                f"The cluster at {ctx.address} refused this node's token",
                why=f"this node offered {where}",
                fix="Use the token `raylm up` printed on the head",
                command=f"export {TOKEN_ENV}=TOKEN",
            ) from None
        raise ClusterError(
            f"The Ray cluster at {ctx.address} did not answer",
            why=_one_line(e),
            fix="Check the head with `raylm status` there",
            command="raylm doctor",
        ) from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def attach(ctx: ClusterContext) -> str:
    """Attach this process to the cluster `ctx` names; returns its GCS address."""
    _apply_context_auth(ctx)
    if ctx.temp_dir:
        # A driver finds its node's raylet, and writes its logs, under the node's temp dir.
        os.environ["RAY_TMPDIR"] = os.path.dirname(ctx.temp_dir)
    import ray

    if ray.is_initialized():
        return ctx.address
    check_reachable(ctx)
    # ray.init may run off the main thread (serve); its note about signals is noise there.
    logging.getLogger("ray._private.worker").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {}
    if ctx.node_ip:
        # Several Ray nodes can share a host (containers, namespaces): name ours.
        kwargs["_node_ip_address"] = ctx.node_ip
    try:
        ray.init(
            address=ctx.address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=False,
            **kwargs,
        )
    except Exception as e:
        raise ClusterError(
            f"Cannot attach to the Ray cluster at {ctx.address}",
            why=_one_line(e),
            fix="Run this on a node of the cluster, after `raylm up` or the join line",
            command="raylm doctor",
        ) from None
    return ctx.address


def ensure_attached(address: str | None = None) -> str:
    """The GCS address this process works on: the cluster it is already attached to (a
    serve run's private one included), else the one `require(address)` names."""
    import ray

    if ray.is_initialized():
        return str(ray.get_runtime_context().gcs_address)
    return attach(require(address))


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
    """Attach to the cluster this node belongs to; with none, start a private single-node
    one for this process (token auth, node IP 127.0.0.1, no dashboard), stopped on close."""
    ctx = resolve(address)
    if ctx is not None:
        return RayConnection(address=attach(ctx), started_here=False)
    return RayConnection(address=start_private(), started_here=True)


def start_private() -> str:
    """Start a single-node Ray cluster owned by this process; returns its GCS address."""
    apply_auth(token=secrets.token_hex(32))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    # ray.init runs off the main thread (the event loop keeps answering); the runner owns
    # the signals, so Ray's note that it could not install its own is noise.
    logging.getLogger("ray._private.worker").setLevel(logging.ERROR)
    try:
        info = ray.init(
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
            why=_one_line(e),
            fix="Check free memory and /tmp space, or attach to a running cluster with --address",
        ) from None
    return str(info.address_info.get("gcs_address", ""))
