"""The checks between nodes: which ports each node reaches, and what answers without a
token (the dashboard, the GCS with auth off, Ray or vLLM ports of any node).

Pure functions of what the probes read (no Ray, no sockets).
"""

from __future__ import annotations

from raylm.cluster.doctor.probes import NodeProbe
from raylm.cluster.doctor.report import Check, CheckStatus, make_check
from raylm.cluster.exposure import Exposure
from raylm.cluster.ports import RayPorts


def check_reach(
    res: dict[str, NodeProbe], ips: dict[str, str], ports: RayPorts
) -> tuple[list[Check], dict[str, dict[str, list[int]]]]:
    """One check per node on whether all nodes reach its ports, and the matrix of the
    ports that did not answer (src ip -> dst ip -> ports), as `--json` prints it."""
    matrix: dict[str, dict[str, list[int]]] = {}
    bad: dict[str, list[str]] = {}
    blocked: dict[str, set[int]] = {}
    sources: dict[str, set[str]] = {}
    for nid, r in res.items():
        src = ips[nid]
        for t in r.reach:
            failed = matrix.setdefault(src, {}).setdefault(t.ip, [])
            if t.error:
                failed.append(t.port)
                bad.setdefault(t.ip, []).append(f"{src} -> {t.ip}:{t.port} ({t.name}): {t.error}")
                blocked.setdefault(t.ip, set()).add(t.port)
                sources.setdefault(t.ip, set()).add(src)
    out = []
    for dst in sorted({ips[n] for n in res}):
        if dst in bad:
            out.append(
                make_check(
                    "reachability",
                    dst,
                    CheckStatus.FAIL,
                    "; ".join(bad[dst][:6]),
                    f"open TCP {','.join(map(str, sorted(blocked[dst])))} on {dst} to the other "
                    f"nodes (all of {ports.firewall_rule()}); with ufw, on {dst}: "
                    + "; ".join(f"`{ports.ufw_command(ip)}`" for ip in sorted(sources[dst]))
                    + "; then `sudo ufw reload`",
                )
            )
        else:
            out.append(
                make_check(
                    "reachability",
                    dst,
                    CheckStatus.PASS,
                    "all nodes reach its Ray and probe ports",
                )
            )
    return out, matrix


def check_auth(
    head_ip: str, res: dict[str, NodeProbe], ips: dict[str, str], ports: RayPorts
) -> list[Check]:
    """Whether the dashboard or the GCS answer without a token, and each node's auth mode."""
    out = []
    open_from = [ips[n] for n, r in res.items() if r.dashboard == "200"]
    if open_from:
        out.append(
            make_check(
                "auth",
                head_ip,
                CheckStatus.FAIL,
                f"the dashboard {head_ip}:{ports.dashboard} answers "
                f"without a token (from {', '.join(sorted(open_from))}): anyone on the network "
                "can run code on the cluster",
                "restart the head with token auth and the "
                "dashboard on 127.0.0.1: raylm down && raylm up",
            )
        )
    else:
        seen = sorted({r.dashboard.split(":")[0] for r in res.values()})
        out.append(
            make_check(
                "auth",
                head_ip,
                CheckStatus.PASS,
                f"dashboard not open without a token ({', '.join(seen)})",
            )
        )
    for nid, r in res.items():
        if r.env.get("RAY_AUTH_MODE") != "token":
            gcs_open = any(
                rr.reached(head_ip, "gcs", ports.gcs)
                for n2, rr in res.items()
                if n2 != nid or len(res) == 1
            )
            out.append(
                make_check(
                    "auth",
                    ips[nid],
                    CheckStatus.FAIL if gcs_open else CheckStatus.WARN,
                    f"Ray token authentication is off on this node (RAY_AUTH_MODE="
                    f"{r.env.get('RAY_AUTH_MODE') or 'unset'})"
                    + ("; the GCS is reachable from the network" if gcs_open else ""),
                    "restart with token auth: raylm down && raylm up (without --no-auth)",
                )
            )
    return out


def check_exposure(found: list[Exposure], ips: list[str]) -> list[Check]:
    """Per node: the Ray or vLLM ports a peer reached without credentials."""
    out = []
    for ip in ips:
        mine = [e for e in found if e.node == ip]
        api = sorted({e.port.port for e in mine if e.api_open})
        loose = sorted(
            {(e.port.port, e.port.process, e.detail) for e in mine if e.unauthenticated}
            - {(e.port.port, e.port.process, e.detail) for e in mine if e.api_open}
        )
        if api:
            out.append(
                make_check(
                    "exposure",
                    ip,
                    CheckStatus.FAIL,
                    "a vLLM replica serves its API to anyone on port(s) "
                    + ", ".join(map(str, api))
                    + ": clients can bypass the gateway and its --api-key",
                    "restart the deployment with this raylm (its replicas require a private "
                    "key), or firewall these ports to the gateway's node",
                )
            )
        if loose:
            out.append(
                make_check(
                    "exposure",
                    ip,
                    CheckStatus.WARN,
                    "reachable without credentials: "
                    + ", ".join(f"{p} ({proc}: {d})" for p, proc, d in loose)
                    + "; Ray's are read-only metrics, vLLM's internal ports have no "
                    "authentication of their own",
                    "fine on a trusted network; otherwise let only the cluster's nodes (and "
                    "your monitoring hosts) reach them",
                )
            )
        if not api and not loose:
            n = len({e.port.port for e in mine})
            out.append(
                make_check(
                    "exposure",
                    ip,
                    CheckStatus.PASS,
                    f"each of its {n} reachable Ray/vLLM port(s) asks for the cluster token "
                    "or the replica key",
                )
            )
    return out
