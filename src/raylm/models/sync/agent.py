"""The per-node agent: the Ray actor that works on one node's store during a sync.

One agent per node, pinned there by the driver, answers queries (info, listing, remove),
verifies its copy, serves byte ranges to other agents, and receives a model: it decides
which files are missing or wrong, checks free space, writes each file to `<file>.part`
while hashing it, and renames only a complete file with the manifest's sha256. How the
bytes travel is `transport.py`'s business. The agent keeps no per-sync settings: each
`receive()` carries its own `TransferSettings`, so syncs of different models on one agent
cannot change each other's chunk size, pacing or transport.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from raylm.errors import ModelError
from raylm.models.manifest import FileProblem, Manifest, VerifyResult, verify_dir
from raylm.models.store import ModelEntry, ModelStore
from raylm.models.sync.schema import AgentInfo, NodeProgress, ReceiveRequest, SyncReport
from raylm.models.sync.transport import (
    FileSlice,
    Pacer,
    StreamTarget,
    TransferSettings,
    pull_objects,
    pull_stream,
    read_chunk,
    send_stream,
)

log = logging.getLogger(__name__)


class _Agent:
    """The work of one node's store; wrapped as a Ray actor by `agent_class()`.

    The class keeps its name: process titles read `ray::_Agent...`, which the store
    benchmark looks for.
    """

    def __init__(self) -> None:
        _bound_malloc()
        self.store = ModelStore()
        self.node = _this_node_ip()
        # Keyed by model name: concurrent receives of different models report apart.
        self._progress: dict[str, NodeProgress] = {}
        self._plock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()

    # -- queries
    def info(self) -> AgentInfo:
        self.store.root.mkdir(parents=True, exist_ok=True)
        return AgentInfo(
            node=self.node,
            root=str(self.store.root),
            free_bytes=shutil.disk_usage(self.store.root).free,
            pid=os.getpid(),
        )

    def manifest(self, name: str) -> Manifest | None:
        return self.store.read_manifest(name)

    def entries(self) -> list[ModelEntry]:
        return self.store.list_models()

    def remove(self, name: str) -> bool:
        return self.store.remove(name)

    def progress(self, name: str) -> NodeProgress:
        with self._plock:
            prog = self._progress.get(name)
            return prog.model_copy() if prog else NodeProgress(node=self.node)

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
    def read_chunk(self, piece: FileSlice) -> Any:
        # Returns a numpy array, not a model: it crosses the object store zero-copy.
        path = self.store.path_of(piece.ref) / piece.rel
        key = str(path)
        with self._fd_lock:
            fd = self._fds.get(key)
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
                self._fds[key] = fd
        return read_chunk(fd, piece.offset, piece.size)

    def send_file(self, piece: FileSlice, target: StreamTarget) -> int:
        """Stream bytes [offset, size) of a file to a receiving agent's socket."""
        return send_stream(self.store.path_of(piece.ref) / piece.rel, piece, target)

    def close_files(self, ref: Manifest) -> None:
        """Close the read handles of `ref`'s files only; another sync's stay open."""
        prefix = str(self.store.path_of(ref)) + os.sep
        with self._fd_lock:
            for key in [k for k in self._fds if k.startswith(prefix)]:
                os.close(self._fds.pop(key))

    # -- receiving side
    def receive(self, source: Any, req: ReceiveRequest) -> SyncReport:
        ref, settings = req.ref, req.settings.clamped()
        t0 = time.monotonic()
        report = SyncReport(node=self.node, ok=False)
        with self._plock:
            self._progress[ref.name] = NodeProgress(node=self.node)
        try:
            with self.store.lock(ref.name):
                self._receive(source, ref, report, settings)
            report.ok = True
        except ModelError as e:
            report.error = e.message()
        except Exception as e:
            log.exception("sync of %s to %s failed", ref.name, self.node)
            report.error = f"{type(e).__name__}: {e}"
        report.seconds = time.monotonic() - t0
        self._set(ref.name, phase="done")
        return report

    def _set(self, name: str, **kw: Any) -> None:
        with self._plock:
            prog = self._progress.setdefault(name, NodeProgress(node=self.node))
            for k, v in kw.items():
                setattr(prog, k, v)

    def _add(self, name: str, nbytes: int, nfiles: int = 0) -> None:
        with self._plock:
            prog = self._progress.setdefault(name, NodeProgress(node=self.node))
            prog.bytes_done += nbytes
            prog.files_done += nfiles

    def _receive(
        self, source: Any, ref: Manifest, report: SyncReport, settings: TransferSettings
    ) -> None:
        store = self.store
        dest = store.path_of(ref)
        report.path = str(dest)
        self._set(ref.name, phase="checking")
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
            ref.name,
            phase="copying",
            bytes_total=need,
            bytes_done=0,
            files_total=len(todo),
            files_done=0,
        )
        pacer = Pacer(settings.limit_bytes_per_s)
        with ThreadPoolExecutor(max_workers=settings.parallel_files) as pool:
            futures = [
                pool.submit(
                    self._receive_file, source, ref, f.path, f.size, f.sha256, settings, pacer
                )
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
        self,
        source: Any,
        ref: Manifest,
        rel: str,
        size: int,
        sha256: str,
        settings: TransferSettings,
        pacer: Pacer,
    ) -> int:
        final = self.store.path_of(ref) / rel
        part = final.with_name(final.name + ".part")
        final.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        offset = _part_size(part, size)
        if offset:  # resume: hash the prefix we already have
            with open(part, "rb") as f:
                while chunk := f.read(settings.chunk_bytes):
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
                    self._add(ref.name, len(data))
                    pacer.wait(len(data))

                piece = FileSlice(ref=ref, rel=rel, offset=offset, size=size)
                streamed = False
                if settings.transport in ("auto", "stream"):
                    streamed = pull_stream(source, piece, self.node, settings, sink)
                if not streamed:
                    if settings.transport == "stream":
                        raise ModelError(
                            f"Node {self.node} could not open a stream from the source",
                            model=ref.name,
                            why="the direct TCP connection between the two agents failed",
                            fix="open TCP between the nodes, or use --transport object-store",
                        )
                    rest = piece.model_copy(update={"offset": offset + sent})
                    pull_objects(source, rest, settings, sink)
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
        self._add(ref.name, 0, 1)
        return sent


def _bound_malloc() -> None:
    """Serve big buffers from mmap and return them on free.

    glibc raises its mmap threshold after the first freed big block, after which 8 MiB
    chunks come from per-thread arenas that keep their pages: with many threads the
    resident size would grow with the bytes moved. A fixed threshold keeps it flat.
    """
    try:
        # Function-local: only an agent process tunes its allocator.
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


def _this_node_ip() -> str:
    # Function-local: Ray reads its auth settings at import.
    import ray

    try:
        return str(ray.util.get_node_ip_address())
    except Exception:
        return "local"


_AGENT_CLS: Any = None


def agent_class() -> Any:
    """`_Agent` as a Ray actor class, made once per process."""
    global _AGENT_CLS
    if _AGENT_CLS is None:
        # Function-local: Ray reads its auth settings at import.
        import ray

        # Threaded: progress() and read_chunk() answer while receive() runs; no CPU is
        # reserved, so a sync never waits behind a replica for a core.
        _AGENT_CLS = ray.remote(num_cpus=0, max_concurrency=32, max_restarts=0)(_Agent)
    return _AGENT_CLS
