"""Verify and copy a model on every node of a Ray cluster, through Ray itself.

No SSH and no shared filesystem: one agent actor per node, pinned there with a hard
NodeAffinitySchedulingStrategy, works on that node's store (its `$RAYLM_HOME`, as set in
the node's Ray processes). A receiving agent asks the source node's agent, through Ray,
for the files it lacks. Two transports carry the bytes:

- `stream` (tried first by `auto`): the receiver listens on its node IP, hands a one-time
  token and the port to the sender through Ray, and the sender `sendfile()`s the byte
  range into that connection. Close to a plain copy's speed.
- `object-store`: 8 MiB chunks as Ray objects (`read_chunk`), a few in flight. Works
  wherever Ray works (no extra port between nodes) at a fraction of the speed; `auto`
  falls back to it when no stream connection comes within 10 s.

Both share the rest:

- bounded memory: one 8 MiB buffer per file in flight (stream), or at most
  `parallel_files * PIPELINE_DEPTH` chunks (object store), whatever the model size;
- resumable: a file is written to `<file>.part`, always a prefix of the real file, so the
  next sync hashes what is there and asks only for the missing tail; files already
  present with the right sha256 are not sent at all;
- checked on arrival and atomic: the sha256 is computed while writing; only a complete
  file with the manifest's sha256 is renamed to its final path, and the node's manifest
  is written after every file, so a half-synced copy never reads as verified;
- a full disk is found before writing (free space vs bytes to send) or, if space runs
  out mid-way, the `.part` is removed and the node reports it; nothing partial ever sits
  at a final path.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import queue
import secrets
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ClusterError, ModelError
from raylm.models.manifest import FileProblem, Manifest, VerifyResult, verify_dir
from raylm.models.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
PIPELINE_DEPTH = 4
PARALLEL_FILES = 4
STREAM_CONNECT_TIMEOUT_S = 10.0
STREAM_IDLE_TIMEOUT_S = 120.0
TRANSPORTS = ("auto", "stream", "object-store")


class NodeProgress(BaseModel):
    """How far one node's sync has come, polled while it runs."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="IP address of the receiving node.")
    bytes_done: int = Field(default=0, description="Bytes received and written so far.")
    bytes_total: int = Field(default=0, description="Bytes this node has to receive.")
    files_done: int = Field(default=0, description="Files completed (verified and renamed).")
    files_total: int = Field(default=0, description="Files this node has to receive.")
    phase: str = Field(default="starting", description="starting, checking, copying or done.")


class SyncReport(BaseModel):
    """What a sync did on one node."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="IP address of the receiving node.")
    path: str = Field(default="", description="The model directory on that node.")
    ok: bool = Field(description="True when the node now holds a verified copy.")
    files_sent: list[str] = Field(default_factory=list, description="Files copied to the node.")
    files_kept: int = Field(default=0, description="Files already present and correct.")
    bytes_sent: int = Field(default=0, description="Bytes moved over the network.")
    bytes_resumed: int = Field(
        default=0, description="Bytes of `.part` files kept from an interrupted sync."
    )
    seconds: float = Field(default=0.0, description="Wall time on the node.")
    error: str = Field(default="", description="Why the node could not be synced, if so.")


# ---- the per-node agent ------------------------------------------------------------------


class _Agent:
    """The work of one node's store; wrapped as a Ray actor by `_agent_class()`."""

    def __init__(self) -> None:
        _bound_malloc()
        self.store = ModelStore()
        self.node = _this_node_ip()
        self._progress = NodeProgress(node=self.node)
        self._plock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()
        self._chunk = CHUNK
        self._depth = PIPELINE_DEPTH
        self._transport = "auto"

    # -- queries
    def info(self) -> dict[str, Any]:
        self.store.root.mkdir(parents=True, exist_ok=True)
        return {
            "node": self.node,
            "root": str(self.store.root),
            "free_bytes": shutil.disk_usage(self.store.root).free,
            "pid": os.getpid(),
        }

    def manifest(self, name: str) -> Manifest | None:
        return self.store.read_manifest(name)

    def entries(self) -> list[ModelEntry]:
        return self.store.list_models()

    def remove(self, name: str) -> bool:
        return self.store.remove(name)

    def progress(self) -> NodeProgress:
        with self._plock:
            return self._progress.model_copy()

    # -- verify
    def verify(self, ref: Manifest, full: bool) -> VerifyResult:
        t0 = time.monotonic()
        try:
            local = self.store.read_manifest(ref.name)
            path = self.store.path_of(ref)
            if (
                not full
                and local is not None
                and local.same_content(ref)
                and self.store.stamp_ok(local)
            ):
                return VerifyResult(
                    name=ref.name,
                    node=self.node,
                    path=str(path),
                    ok=True,
                    files_checked=len(ref.files),
                    seconds=time.monotonic() - t0,
                )
            res = verify_dir(path, ref, node=self.node)
            if local is None or not local.same_content(ref):
                res.problems.append(
                    FileProblem(
                        path="(manifest)",
                        problem="missing" if local is None else "sha256",
                        detail="no manifest on this node"
                        if local is None
                        else "this node's manifest describes other files",
                    )
                )
            if res.ok or (res.problems and all(p.path == "(manifest)" for p in res.problems)):
                # Every byte matches: (re)write this node's manifest and stamp, e.g. for a
                # copy placed by hand.
                self.store.write_manifest(ref)
                self.store.write_stamp(ref)
                res.problems = []
                res.ok = True
            else:  # never trust this copy's stat stamp again until it is repaired
                self.store.stamp_path(ref.name).unlink(missing_ok=True)
            return res
        except Exception as e:  # reported per node, never raised through Ray
            return VerifyResult(
                name=ref.name, node=self.node, path="", ok=False, error=f"{type(e).__name__}: {e}"
            )

    # -- sending side
    def read_chunk(self, ref: Manifest, rel: str, offset: int, size: int) -> Any:
        import numpy as np

        path = self.store.path_of(ref) / rel
        key = str(path)
        with self._fd_lock:
            fd = self._fds.get(key)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                self._fds[key] = fd
        # A numpy array travels out-of-band: one copy into the object store here, and
        # the receiver reads it in place (zero-copy) instead of unpickling a bytes copy.
        buf: Any = np.empty(size, dtype=np.uint8)
        n = os.preadv(fd, [memoryview(buf)], offset)
        return buf[:n]

    def send_file(
        self, ref: Manifest, rel: str, offset: int, size: int, host: str, port: int, token: bytes
    ) -> int:
        """Stream bytes [offset, size) of a file to a receiving agent's socket."""
        path = self.store.path_of(ref) / rel
        with (
            socket.create_connection((host, port), timeout=STREAM_CONNECT_TIMEOUT_S) as conn,
            open(path, "rb") as f,
        ):
            conn.settimeout(STREAM_IDLE_TIMEOUT_S)
            conn.sendall(token)
            # socket.sendfile: zero-copy os.sendfile, waiting on the timeout-mode socket.
            sent = conn.sendfile(f, offset, size - offset) if size > offset else 0
        return sent

    def close_files(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    # -- receiving side
    def receive(
        self,
        source: Any,
        ref: Manifest,
        *,
        parallel_files: int = PARALLEL_FILES,
        limit_bytes_per_s: float | None = None,
        chunk_bytes: int = CHUNK,
        pipeline_depth: int = PIPELINE_DEPTH,
        transport: str = "auto",
    ) -> SyncReport:
        t0 = time.monotonic()
        report = SyncReport(node=self.node, ok=False)
        try:
            with self.store.lock(ref.name):
                self._chunk, self._depth = max(1 << 16, chunk_bytes), max(1, pipeline_depth)
                self._transport = transport
                self._receive(source, ref, report, parallel_files, limit_bytes_per_s)
            report.ok = True
        except ModelError as e:
            report.error = e.message()
        except Exception as e:
            log.exception("sync of %s to %s failed", ref.name, self.node)
            report.error = f"{type(e).__name__}: {e}"
        report.seconds = time.monotonic() - t0
        with self._plock:
            self._progress.phase = "done"
        return report

    def _set(self, **kw: Any) -> None:
        with self._plock:
            for k, v in kw.items():
                setattr(self._progress, k, v)

    def _add(self, nbytes: int, nfiles: int = 0) -> None:
        with self._plock:
            self._progress.bytes_done += nbytes
            self._progress.files_done += nfiles

    def _receive(
        self,
        source: Any,
        ref: Manifest,
        report: SyncReport,
        parallel_files: int,
        limit: float | None,
    ) -> None:
        store = self.store
        dest = store.path_of(ref)
        report.path = str(dest)
        self._set(phase="checking")
        local = store.read_manifest(ref.name)
        trusted: set[str] = set()
        if local is not None and local.same_content(ref) and store.stamp_ok(local):
            trusted = {f.path for f in ref.files}
        check = verify_dir(dest, ref, only=[f.path for f in ref.files if f.path not in trusted])
        bad = {p.path for p in check.problems}
        todo = [f for f in ref.files if f.path in bad]
        report.files_kept = len(ref.files) - len(todo)
        if not todo and local is not None and local.same_content(ref):
            store.write_stamp(local)
            return
        store.forget(ref.name)
        dest.mkdir(parents=True, exist_ok=True)
        if ref.external_path is None:
            _remove_strays(dest, ref)
        parts = {f.path: _part_size(dest / f"{f.path}.part", f.size) for f in todo}
        need = sum(f.size - parts[f.path] for f in todo)
        free = shutil.disk_usage(dest).free
        if need > free:
            raise ModelError(
                f"Not enough disk space on node {self.node} for {ref.name}",
                model=ref.name,
                why=f"{need / 2**20:.1f} MiB to write under {dest}, {free / 2**20:.1f} MiB free",
                fix="free space on that node or give it a larger RAYLM_HOME, then sync again",
                command=f"raylm model sync {ref.name} --nodes {self.node}",
            )
        report.bytes_resumed = sum(parts.values())
        self._set(
            phase="copying",
            bytes_total=need,
            bytes_done=0,
            files_total=len(todo),
            files_done=0,
        )
        pacer = _Pacer(limit)
        with ThreadPoolExecutor(max_workers=max(1, parallel_files)) as pool:
            futures = [
                pool.submit(self._receive_file, source, ref, f.path, f.size, f.sha256, pacer)
                for f in sorted(todo, key=lambda f: -f.size)
            ]
            errors = []
            for fut in futures:
                try:
                    report.bytes_sent += fut.result()
                except Exception as e:
                    errors.append(e)
        if errors:
            raise errors[0]
        report.files_sent = sorted(f.path for f in todo)
        store.write_manifest(ref)
        store.write_stamp(ref)

    def _receive_file(
        self, source: Any, ref: Manifest, rel: str, size: int, sha256: str, pacer: _Pacer
    ) -> int:
        final = self.store.path_of(ref) / rel
        part = final.with_name(final.name + ".part")
        final.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        offset = _part_size(part, size)
        if offset:  # resume: hash the prefix we already have
            with open(part, "rb") as f:
                while chunk := f.read(self._chunk):
                    h.update(chunk)
        sent = 0
        try:
            with open(part, "r+b" if offset else "wb") as out:
                out.seek(offset)
                out.truncate()

                def sink(data: memoryview) -> None:
                    nonlocal sent
                    out.write(data)
                    h.update(data)
                    sent += len(data)
                    self._add(len(data))
                    pacer.wait(len(data))

                streamed = False
                if self._transport in ("auto", "stream"):
                    streamed = self._pull_stream(source, ref, rel, offset, size, sink)
                if not streamed:
                    if self._transport == "stream":
                        raise ModelError(
                            f"Node {self.node} could not open a stream from the source",
                            model=ref.name,
                            why="the direct TCP connection between the two agents failed",
                            fix="open TCP between the nodes, or use --transport object-store",
                        )
                    self._pull_objects(source, ref, rel, offset + sent, size, sink)
                if offset + sent != size:
                    raise ModelError(
                        f"The source's copy of {rel} ended early",
                        model=ref.name,
                        why=f"got {offset + sent} of {size} bytes",
                        fix="verify the source copy",
                        command=f"raylm model verify {ref.name}",
                    )
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                part.unlink(missing_ok=True)
                raise ModelError(
                    f"Disk full on node {self.node} while writing {rel}",
                    model=ref.name,
                    why=str(e),
                    fix="free space on that node (the partial file was removed), then sync again",
                    command=f"raylm model sync {ref.name} --nodes {self.node}",
                ) from e
            raise
        if h.hexdigest() != sha256:
            part.unlink(missing_ok=True)
            raise ModelError(
                f"{rel} arrived on node {self.node} with another sha256",
                model=ref.name,
                why=f"expected {sha256[:16]}..., got {h.hexdigest()[:16]}...",
                fix="verify the source copy, then sync again",
                command=f"raylm model verify {ref.name}",
            )
        os.replace(part, final)
        self._add(0, 1)
        return sent

    def _pull_objects(
        self,
        source: Any,
        ref: Manifest,
        rel: str,
        offset: int,
        size: int,
        sink: Callable[[memoryview], None],
    ) -> None:
        """Chunks as Ray objects: works wherever Ray works, slower than a stream."""
        import ray

        pending: deque[Any] = deque()
        next_off = offset
        while next_off < size or pending:
            while next_off < size and len(pending) < self._depth:
                n = min(self._chunk, size - next_off)
                pending.append(source.read_chunk.remote(ref, rel, next_off, n))
                next_off += n
            arr = ray.get(pending.popleft())
            data = memoryview(arr).cast("B")
            if not data:
                return
            sink(data)
            del data, arr  # release the object-store buffer now

    def _pull_stream(
        self,
        source: Any,
        ref: Manifest,
        rel: str,
        offset: int,
        size: int,
        sink: Callable[[memoryview], None],
    ) -> bool:
        """Ask the source agent (through Ray) to sendfile() the bytes to a socket here.

        The listener takes one connection, which must open with a one-time token handed
        over through Ray; the sha256 check catches anything else. Returns False when no
        connection came (e.g. a firewall), so the caller falls back to Ray objects.
        """
        import ray

        token = secrets.token_bytes(16)
        with socket.create_server((self.node if self.node != "local" else "", 0)) as srv:
            srv.settimeout(STREAM_CONNECT_TIMEOUT_S)
            port = srv.getsockname()[1]
            sending = source.send_file.remote(ref, rel, offset, size, self.node, port, token)
            try:
                conn, _ = srv.accept()
            except OSError as e:
                log.warning("no stream from the source for %s (%s); using Ray objects", rel, e)
                return False
        with conn:
            conn.settimeout(STREAM_IDLE_TIMEOUT_S)
            got = b""
            while len(got) < len(token):
                piece = conn.recv(len(token) - len(got))
                if not piece:
                    break
                got += piece
            if not hmac.compare_digest(got, token):
                raise ModelError(
                    f"An unexpected peer connected to node {self.node}'s sync stream",
                    model=ref.name,
                    fix="check who else reaches this node, then sync again",
                )
            _recv_overlapped(conn, size - offset, self._chunk, sink)
        ray.get(sending)  # surfaces the sender's error, if any
        return True


def _recv_overlapped(
    conn: socket.socket, total: int, chunk: int, sink: Callable[[memoryview], None]
) -> None:
    """Receive `total` bytes while a second thread writes and hashes the previous buffer.

    Three fixed buffers cycle between the two threads, so memory stays at 3 * chunk.
    """
    free: queue.Queue[memoryview] = queue.Queue()
    full: queue.Queue[tuple[memoryview, int] | None] = queue.Queue()
    for _ in range(3):
        free.put(memoryview(bytearray(chunk)))
    failure: list[BaseException] = []

    def drain() -> None:
        while (item := full.get()) is not None:
            buf, n = item
            try:
                if not failure:
                    sink(buf[:n])
            except BaseException as e:
                failure.append(e)
            free.put(buf)

    writer = threading.Thread(target=drain, daemon=True)
    writer.start()
    left = total
    try:
        while left > 0 and not failure:
            buf = free.get()
            filled = 0
            want = min(len(buf), left)
            while filled < want:  # fill the buffer: fewer, larger writes and hash updates
                n = conn.recv_into(buf[filled:want])
                if n == 0:
                    break
                filled += n
            if filled == 0:
                free.put(buf)
                break
            full.put((buf, filled))
            left -= filled
            if filled < want:
                break
    finally:
        full.put(None)
        writer.join()
    if failure:
        raise failure[0]


def _bound_malloc() -> None:
    """Serve big buffers from mmap and return them on free.

    glibc raises its mmap threshold after the first freed big block, after which 8 MiB
    chunks come from per-thread arenas that keep their pages: with many threads the
    resident size would grow with the bytes moved. A fixed threshold keeps it flat.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 1 << 20)
    except (OSError, AttributeError):
        log.debug("mallopt unavailable; memory may grow with transfer size")


def _part_size(part: Path, size: int) -> int:
    try:
        n = part.stat().st_size
    except FileNotFoundError:
        return 0
    return n if n <= size else 0


def _remove_strays(dest: Path, ref: Manifest) -> None:
    """Delete files that are not part of the model (e.g. from an older revision)."""
    wanted = {f.path for f in ref.files}
    for p in list(dest.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(dest).as_posix()
        if rel.removesuffix(".part") not in wanted:
            p.unlink()


class _Pacer:
    """An optional bandwidth cap for one node, shared by its file threads."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.t0 = time.monotonic()
        self.total = 0
        self.lock = threading.Lock()

    def wait(self, n: int) -> None:
        if not self.limit:
            return
        with self.lock:
            self.total += n
            due = self.t0 + self.total / self.limit
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _this_node_ip() -> str:
    import ray

    try:
        return str(ray.util.get_node_ip_address())
    except Exception:
        return "local"


_AGENT_CLS: Any = None


def _agent_class() -> Any:
    global _AGENT_CLS
    if _AGENT_CLS is None:
        import ray

        # Threaded: progress() and read_chunk() answer while receive() runs; no CPU is
        # reserved, so a sync never waits behind a replica for a core.
        _AGENT_CLS = ray.remote(num_cpus=0, max_concurrency=32, max_restarts=0)(_Agent)
    return _AGENT_CLS


# ---- driver side -------------------------------------------------------------------------


def alive_nodes() -> dict[str, str]:
    """{node IP: Ray node id} of every alive node."""
    import ray

    out: dict[str, str] = {}
    for n in ray.nodes():
        if n.get("Alive"):
            out.setdefault(str(n["NodeManagerAddress"]), str(n["NodeID"]))
    return out


def _spawn(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return (
        _agent_class()
        .options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        .remote()
    )


class _Agents:
    """One agent per node, killed on exit so no worker outlives the operation."""

    def __init__(self, ips: Sequence[str]) -> None:
        import ray

        alive = alive_nodes()
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
        return sorted(alive_nodes())
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
    import ray

    ref = _reference(model, store)
    ips = resolve_nodes(node_ips)
    alive = alive_nodes()
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
        running = {
            ip: agents.handles[ip].receive.remote(
                src,
                ref,
                parallel_files=parallel_files,
                limit_bytes_per_s=limit_bytes_per_s,
                chunk_bytes=chunk_bytes,
                pipeline_depth=pipeline_depth,
                transport=transport,
            )
            for ip in targets
        }
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
                            prog[ip] = ray.get(agents.handles[ip].progress.remote(), timeout=5)
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
        ray.get(src.close_files.remote())
        return {ip: reports[ip] for ip in targets}


def list_on_nodes(node_ips: Sequence[str] | None = None) -> dict[str, list[ModelEntry]]:
    """Every node's store listing (entries with that node's `verified`)."""
    import ray

    ips = resolve_nodes(node_ips)
    with _Agents(ips) as agents:
        refs = {ip: h.entries.remote() for ip, h in agents.handles.items()}
        return {ip: ray.get(r) for ip, r in refs.items()}


def remove_on_nodes(name: str, node_ips: Sequence[str] | None = None) -> dict[str, bool]:
    """Remove `name` from every node's store; {ip: whether there was something to remove}."""
    import ray

    ips = resolve_nodes(node_ips)
    with _Agents(ips) as agents:
        refs = {ip: h.remove.remote(name) for ip, h in agents.handles.items()}
        return {ip: ray.get(r) for ip, r in refs.items()}
