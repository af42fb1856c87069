"""`raylm debug-bundle`: one .tar.gz holding what a multi-node failure is debugged from,
gathered from every node over Ray.

Each node (a task pinned to it) sends its facts and versions, `nvidia-smi` or its CPU
inventory, its interfaces and routes, its environment, raylm's record of it, and bounded
tails of raylm's, Ray's and vLLM's logs. Every file is redacted on the node it comes from
(raylm.redact: that node's token and keys, and the shapes secrets take), and again here
with what this machine knows, before anything is written. The cluster-wide part is the
node list, `raylm doctor`'s report and the spec, if given.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ConfigError
from raylm.redact import Redactor, known_secrets

TAIL_BYTES = 256 * 1024
"""The most of one log file a bundle holds (its end)."""
MAX_LOGS = 60
"""Log files per directory, the most recently written first."""
_NODE_TIMEOUT_S = 120.0


class NodeBundle(BaseModel):
    """What one node sends: its files, already redacted."""

    model_config = ConfigDict(extra="forbid")

    node_ip: str = Field(description="The node's IP in the cluster.")
    files: dict[str, str] = Field(description="Path in the bundle (under the node) -> text.")
    redacted: int = Field(ge=0, description="Secrets replaced on the node.")


class BundleResult(BaseModel):
    """What `raylm debug-bundle` wrote."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The .tar.gz written.")
    nodes: list[str] = Field(description="Nodes whose files it holds.")
    missing: dict[str, str] = Field(description="Per node that sent nothing, why.")
    size_bytes: int = Field(ge=0, description="Size of the archive.")
    redacted: int = Field(ge=0, description="Secrets replaced, over every node and here.")


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} is not installed)\n"
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({' '.join(argv)} failed: {e})\n"
    return p.stdout + p.stderr


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - TAIL_BYTES))
        data = f.read(TAIL_BYTES)
    return data.decode("utf-8", errors="replace")


def _logs(root: Path, prefix: str, files: dict[str, str]) -> None:
    if not root.is_dir():
        return
    dated = []
    for p in root.rglob("*"):
        try:  # a log rotated away meanwhile is skipped, not the node's whole part
            if p.is_file() and not p.is_symlink():
                dated.append((p.stat().st_mtime, p))
        except OSError:
            continue
    dated.sort(key=lambda t: t[0], reverse=True)
    for _, p in dated[:MAX_LOGS]:
        try:
            files[f"{prefix}/{p.relative_to(root)}"] = _tail(p)
        except OSError as e:
            files[f"{prefix}/{p.relative_to(root)}"] = f"(unreadable: {e})\n"


def _ray_logs_dir() -> Path | None:
    """This node's Ray session logs: as the Ray worker running this task knows them, else
    under the temp dir raylm's record names."""
    try:
        import ray._private.worker as worker  # no public API names it

        return Path(worker.global_worker.node.get_logs_dir_path())
    except Exception:
        from raylm.cluster.record import read_state

        state = read_state()
        return Path(state.temp_dir) / "session_latest" / "logs" if state else None


def gather_node(extra_secrets: list[str]) -> NodeBundle:
    """This node's part of the bundle (run on it, as a Ray task)."""
    import ray  # function-local: Ray reads its auth settings at import

    from raylm.cluster.node import local_node_facts
    from raylm.cluster.record import state_path
    from raylm.home import logs_dir

    files: dict[str, str] = {}
    files["facts.json"] = local_node_facts().model_dump_json(indent=2)
    if shutil.which("nvidia-smi"):
        files["nvidia-smi.txt"] = _run(["nvidia-smi"])
    files["cpu.txt"] = _run(["lscpu"])
    files["network.txt"] = _run(["ip", "addr"]) + "\n" + _run(["ip", "route"])
    if state_path().exists():
        files["raylm-node.json"] = state_path().read_text()
    _logs(logs_dir(), "logs/raylm", files)
    ray_logs = _ray_logs_dir()
    if ray_logs is None or not ray_logs.is_dir():
        files["logs/ray-missing.txt"] = f"no Ray log directory found (looked at {ray_logs})\n"
    else:
        _logs(ray_logs, "logs/ray", files)
    redactor = Redactor(known_secrets(extra_secrets))
    out = {name: redactor.text(text) for name, text in files.items()}
    out["env.txt"] = redactor.env(dict(os.environ))
    return NodeBundle(node_ip=ray.util.get_node_ip_address(), files=out, redacted=redactor.count)


def read_spec(path: Path) -> tuple[str, list[str]]:
    """The spec file's text and the keys it holds (its API, admin and named keys)."""
    from raylm.config import load_specs

    specs = load_specs(path, {})
    secrets = []
    for spec in specs:
        for key in (spec.api_key, spec.admin_key, *(k.key for k in spec.keys)):
            if key is not None:
                secrets.append(key.get_secret_value())
    return path.read_text(), secrets


def collect_bundle(
    output: Path | None, spec_text: str | None, spec_secrets: list[str], address: str | None
) -> BundleResult:
    """Gather every alive node's part and the cluster's, and write the archive."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from raylm.cluster.context import ensure_attached
    from raylm.cluster.doctor import run_doctor
    from raylm.cluster.nodes import cluster_nodes

    path = (
        output
        or Path.cwd()
        / f"raylm-debug-{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}.tar.gz"
    )
    try:  # before gathering: a path it cannot write is said at once, 0600 from the start
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise ConfigError(
            f"Cannot write the bundle to {path}",
            why=f"{type(e).__name__}: {e.strerror}",
            fix="Give a writable path",
            command="raylm debug-bundle -o /tmp/raylm-debug.tar.gz",
        ) from None
    os.close(fd)
    ensure_attached(address)
    listed = cluster_nodes()
    task = ray.remote(num_cpus=0, max_retries=0)(gather_node)
    alive = [n for n in listed if n.alive]
    refs = {
        n.ip: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote(spec_secrets)
        for n in alive
    }
    redactor = Redactor(known_secrets(spec_secrets))
    root = path.name.removesuffix(".tar.gz")
    files: dict[str, str] = {
        "cluster.json": json.dumps([n.model_dump() for n in listed], indent=2),
    }
    try:
        files["doctor.json"] = run_doctor(address).model_dump_json(indent=2)
    except Exception as e:  # the bundle is most needed when the cluster is broken
        files["doctor.json"] = json.dumps({"error": f"{type(e).__name__}: {e}"})
    if spec_text is not None:
        files["spec.toml"] = spec_text
    nodes, missing, counted = [], {}, 0
    # One deadline for all: a hung node costs its wait once, not once per node.
    ray.wait(list(refs.values()), num_returns=len(refs), timeout=_NODE_TIMEOUT_S)
    for ip, ref in refs.items():
        try:
            part: NodeBundle = ray.get(ref, timeout=0.1)
        except Exception as e:
            missing[ip] = f"{type(e).__name__}: {e}"[:500]
            continue
        nodes.append(ip)
        counted += part.redacted
        files.update({f"nodes/{ip}/{k}": v for k, v in part.files.items()})
    for n in listed:
        if not n.alive:
            missing[n.ip] = "Ray reports this node dead"
    if missing:
        files["missing.json"] = json.dumps(missing, indent=2)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in sorted(files.items()):
            data = redactor.text(text).encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    return BundleResult(
        path=str(path),
        nodes=nodes,
        missing=missing,
        size_bytes=path.stat().st_size,
        redacted=counted + redactor.count,
    )
