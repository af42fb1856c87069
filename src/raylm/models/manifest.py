"""The manifest of a stored model (every file, its size and sha256) and verification.

Hashing reads each file in fixed-size chunks into one reusable buffer, so memory stays
bounded whatever the model size, and runs files in a thread pool: hashlib releases the
GIL on large updates, so threads scale across cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ModelError

HASH_CHUNK = 8 * 1024 * 1024
MANIFEST_VERSION = 1

# Files that belong to the store's bookkeeping, never to the model itself.
IGNORED_NAMES = frozenset({".raylm", ".cache", ".git", ".gitattributes"})


class FileEntry(BaseModel):
    """One file of a model, as recorded in its manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Path relative to the model directory, '/'-separated.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(description="Lower-case hex sha256 of the file's bytes.")


class Manifest(BaseModel):
    """What a complete, intact copy of a model is: written last, after every file."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=MANIFEST_VERSION, description="Manifest format version.")
    name: str = Field(description="Name of the model in the store.")
    source: str = Field(description="Where it came from: gguf, local, hf or modelscope.")
    repo: str | None = Field(default=None, description="Hub repository id, for pulled models.")
    revision: str = Field(description="Hub commit, or a content id for imports.")
    external_path: str | None = Field(
        default=None,
        description="Absolute directory of a model registered in place (not under the store).",
    )
    created_at: float = Field(default_factory=time.time, description="Unix time of creation.")
    files: list[FileEntry] = Field(description="Every file of the model, sorted by path.")

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def same_content(self, other: Manifest) -> bool:
        """True when both describe the same bytes (names and hashes), whatever their dates."""
        return {(f.path, f.size, f.sha256) for f in self.files} == {
            (f.path, f.size, f.sha256) for f in other.files
        }


class FileProblem(BaseModel):
    """One file that is not as the manifest says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Path relative to the model directory.")
    problem: str = Field(description="'missing', 'size' (wrong size) or 'sha256' (other bytes).")
    detail: str = Field(default="", description="Expected and found values, for humans.")


class VerifyResult(BaseModel):
    """The outcome of checking one copy of a model against a manifest."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name.")
    node: str = Field(default="local", description="IP address of the node checked, or 'local'.")
    path: str = Field(description="The model directory that was checked.")
    ok: bool = Field(description="True when every file is present with the expected sha256.")
    files_checked: int = Field(default=0, description="How many files were hashed or checked.")
    bytes_hashed: int = Field(default=0, description="Bytes read and hashed.")
    seconds: float = Field(default=0.0, description="Wall time of the check.")
    problems: list[FileProblem] = Field(
        default_factory=list, description="Every missing or differing file."
    )
    error: str = Field(default="", description="Why the check itself could not run, if so.")

    def summary(self) -> str:
        if self.error:
            return f"{self.node}: {self.error}"
        if self.ok:
            return f"{self.node}: ok ({self.files_checked} files)"
        bad = ", ".join(f"{p.path} ({p.problem})" for p in self.problems)
        return f"{self.node}: {len(self.problems)} bad file(s): {bad}"


def sha256_file(path: Path, chunk: int = HASH_CHUNK) -> str:
    """The sha256 of one file, read in `chunk`-byte pieces into one reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def hash_files(
    root: Path,
    rels: Iterable[str],
    *,
    workers: int | None = None,
    on_file: Callable[[str, int], None] | None = None,
) -> dict[str, str]:
    """Hash many files under `root` in parallel; returns {relative path: sha256}."""
    rel_list = list(rels)

    def one(rel: str) -> tuple[str, str]:
        p = root / rel
        digest = sha256_file(p)
        if on_file is not None:
            on_file(rel, p.stat().st_size)
        return rel, digest

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return dict(pool.map(one, rel_list))


def list_model_files(model_dir: Path) -> list[str]:
    """Every regular file of a model directory, relative and sorted, without bookkeeping."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(model_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_NAMES)
        for fn in filenames:
            if fn in IGNORED_NAMES or fn.endswith(".part"):
                continue
            p = Path(dirpath) / fn
            if p.is_file():
                out.append(p.relative_to(model_dir).as_posix())
    return sorted(out)


def build_manifest(
    model_dir: Path,
    *,
    name: str,
    source: str,
    revision: str,
    repo: str | None = None,
    external_path: str | None = None,
    workers: int | None = None,
) -> Manifest:
    """Hash every file of `model_dir` and describe it."""
    rels = list_model_files(model_dir)
    if not rels:
        raise ModelError(
            f"No files in {model_dir}",
            model=name,
            why="a model directory needs at least config.json and weights",
            fix="point at a Hugging Face-format model directory",
        )
    digests = hash_files(model_dir, rels, workers=workers)
    files = [
        FileEntry(path=r, size=(model_dir / r).stat().st_size, sha256=digests[r]) for r in rels
    ]
    return Manifest(
        name=name,
        source=source,
        repo=repo,
        revision=revision,
        external_path=external_path,
        files=files,
    )


def verify_dir(
    model_dir: Path,
    manifest: Manifest,
    *,
    node: str = "local",
    workers: int | None = None,
    only: Iterable[str] | None = None,
) -> VerifyResult:
    """Check every file of `manifest` (or just `only`) in `model_dir`: presence, size, sha256."""
    t0 = time.monotonic()
    wanted = set(only) if only is not None else None
    entries = [f for f in manifest.files if wanted is None or f.path in wanted]
    problems: list[FileProblem] = []
    to_hash: list[FileEntry] = []
    for f in entries:
        p = model_dir / f.path
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            problems.append(FileProblem(path=f.path, problem="missing"))
            continue
        if size != f.size:
            problems.append(
                FileProblem(
                    path=f.path, problem="size", detail=f"expected {f.size} bytes, found {size}"
                )
            )
            continue
        to_hash.append(f)
    digests = hash_files(model_dir, (f.path for f in to_hash), workers=workers)
    for f in to_hash:
        if digests[f.path] != f.sha256:
            problems.append(
                FileProblem(
                    path=f.path,
                    problem="sha256",
                    detail=f"expected {f.sha256[:16]}..., found {digests[f.path][:16]}...",
                )
            )
    problems.sort(key=lambda p: p.path)
    return VerifyResult(
        name=manifest.name,
        node=node,
        path=str(model_dir),
        ok=not problems,
        files_checked=len(entries),
        bytes_hashed=sum(f.size for f in to_hash),
        seconds=time.monotonic() - t0,
        problems=problems,
    )


def stat_stamp(model_dir: Path, manifest: Manifest) -> dict[str, list[int]] | None:
    """{path: [size, mtime_ns]} of every manifest file, or None when one is missing."""
    out: dict[str, list[int]] = {}
    for f in manifest.files:
        try:
            st = (model_dir / f.path).stat()
        except FileNotFoundError:
            return None
        out[f.path] = [st.st_size, st.st_mtime_ns]
    return out


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
