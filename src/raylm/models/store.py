"""The model store of one node: `$RAYLM_HOME/models`.

Layout (the same on every node, so a model lands at the same path everywhere)::

    <root>/<name>/                     the model directory handed to vLLM
    <root>/.raylm/manifests/<name>.json every file, size, sha256 (written last)
    <root>/.raylm/stamps/<name>.json   size + mtime of each file at the last full verify
    <root>/.raylm/locks/<name>.lock    held while a model is imported, pulled or synced
    <root>/.raylm/tmp/                 conversions and downloads in progress

A model directory without a manifest is incomplete (a crash mid-import) and is redone on
next use. A model registered in place (`import DIR`) keeps its files where they are; the
store only holds its manifest, and `rm` never deletes them.

Bringing models in (resolving references, converting GGUF files, registering directories)
is `raylm.models.importer`'s; the methods of those names here delegate to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raylm.errors import ModelError
from raylm.home import models_dir
from raylm.models.manifest import (
    Manifest,
    VerifyResult,
    stat_stamp,
    verify_dir,
    write_json_atomic,
)

log = logging.getLogger(__name__)

Source = Literal["gguf", "local", "hf", "modelscope"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOCK_TIMEOUT_S = 1800.0


class ModelEntry(BaseModel):
    """A model as the rest of raylm sees it: where it is and whether it is intact."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name in the store (or the directory name of a bare path).")
    path: Path = Field(description="The model directory to hand to vLLM.")
    source: Source = Field(description="How it entered the store: gguf, local, hf or modelscope.")
    repo: str | None = Field(default=None, description="Hub repository id, for pulled models.")
    revision: str = Field(default="", description="Hub commit, or a content id for imports.")
    size_bytes: int = Field(default=0, description="Total size of the model's files.")
    verified: bool = Field(
        default=False,
        description="True when a manifest exists and every file still has the size and "
        "modification time it had when last fully hashed on this node.",
    )
    manifest: Path | None = Field(
        default=None, description="This node's manifest file; None for an unregistered path."
    )


def check_name(name: str) -> str:
    """Return `name` if it is a valid store name, else raise a ModelError saying why."""
    if not NAME_RE.match(name):
        raise ModelError(
            f"Invalid model name {name!r}",
            model=name,
            why="names are 1-128 characters of letters, digits, '.', '_' and '-', "
            "not starting with '.' or '-'",
            fix="choose another name with --name",
        )
    return name


def default_name(ref: str) -> str:
    """A store name derived from a repo id, a directory or a file name."""
    base = ref.strip("/").replace("/", "--")
    base = re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip(".-")
    return base[:128] or "model"


class ModelStore:
    """The model store rooted at `root` (default: `$RAYLM_HOME/models`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else models_dir()
        self.meta = self.root / ".raylm"

    # ---- paths -------------------------------------------------------------------------

    def manifest_path(self, name: str) -> Path:
        return self.meta / "manifests" / f"{name}.json"

    def stamp_path(self, name: str) -> Path:
        return self.meta / "stamps" / f"{name}.json"

    def tmp_dir(self) -> Path:
        d = self.meta / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def model_dir(self, name: str) -> Path:
        """Where a store-owned model's files live (whether or not they exist)."""
        return self.root / check_name(name)

    def path_of(self, manifest: Manifest) -> Path:
        """The directory of the model a manifest describes, on this node."""
        if manifest.external_path:
            return Path(manifest.external_path)
        return self.model_dir(manifest.name)

    # ---- locking -----------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold an exclusive per-model file lock (across processes) for the block."""
        lock_file = self.meta / "locks" / f"{check_name(name)}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise ModelError(
                            f"Timed out waiting for the lock on model {name}",
                            model=name,
                            why=f"another process has held {lock_file} for {timeout:.0f} s",
                            fix="wait for the other import/pull/sync to finish, or stop it",
                        ) from None
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    # ---- manifests and stamps ------------------------------------------------------------

    def read_manifest(self, name: str) -> Manifest | None:
        """The manifest of `name` on this node, or None if there is none (or it is damaged)."""
        p = self.manifest_path(name)
        try:
            return Manifest.model_validate_json(p.read_bytes())
        except FileNotFoundError:
            return None
        except (ValidationError, ValueError) as e:
            log.warning("ignoring damaged manifest %s: %s", p, e)
            return None

    def write_manifest(self, manifest: Manifest) -> Path:
        p = self.manifest_path(check_name(manifest.name))
        write_json_atomic(p, manifest.model_dump(mode="json"))
        return p

    def write_stamp(self, manifest: Manifest) -> None:
        stamp = stat_stamp(self.path_of(manifest), manifest)
        if stamp is not None:
            write_json_atomic(self.stamp_path(manifest.name), stamp)

    def forget(self, name: str) -> None:
        """Drop the manifest and stamp first, so a half-changed copy never reads as complete."""
        for p in (self.manifest_path(name), self.stamp_path(name)):
            p.unlink(missing_ok=True)

    def copy_from(self, source: ModelStore, name: str) -> ModelEntry:
        """Replace this store's copy of `name` with `source`'s (same machine: a plain file
        copy with mtimes kept, so the carried stamp still verifies without re-hashing)."""
        source_manifest = source.read_manifest(name)
        if source_manifest is None:
            raise ModelError(
                f"Model {name!r} is not in the store at {source.root}",
                model=name,
                command="raylm model list",
            )
        # The copy lives here, even when the source was registered in place.
        manifest = source_manifest.model_copy(update={"external_path": None})
        self.forget(name)
        dest = self.model_dir(name)
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source.path_of(source_manifest), dest)
        self.write_manifest(manifest)
        self.write_stamp(manifest)
        entry = self.get(name)
        assert entry is not None
        return entry

    def stamp_ok(self, manifest: Manifest) -> bool:
        """Cheap check: every file has the size and mtime it had at the last full verify."""
        try:
            saved = json.loads(self.stamp_path(manifest.name).read_text())
        except (FileNotFoundError, ValueError):
            return False
        return bool(saved == stat_stamp(self.path_of(manifest), manifest))

    def entry_from(self, manifest: Manifest) -> ModelEntry:
        return ModelEntry(
            name=manifest.name,
            path=self.path_of(manifest),
            source=manifest.source,  # type: ignore[arg-type]
            repo=manifest.repo,
            revision=manifest.revision,
            size_bytes=manifest.size_bytes,
            verified=self.stamp_ok(manifest),
            manifest=self.manifest_path(manifest.name),
        )

    # ---- queries -----------------------------------------------------------------------

    def get(self, name: str) -> ModelEntry | None:
        """The entry of `name`, or None when the store has no complete copy of it."""
        if not NAME_RE.match(name):
            return None
        m = self.read_manifest(name)
        return self.entry_from(m) if m is not None else None

    def list_models(self) -> list[ModelEntry]:
        """Every model with a manifest on this node, sorted by name."""
        d = self.meta / "manifests"
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.glob("*.json")):
            m = self.read_manifest(p.stem)
            if m is not None:
                out.append(self.entry_from(m))
        return out

    def incomplete(self) -> list[str]:
        """Names of store directories that have no manifest (an interrupted import or sync)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and NAME_RE.match(p.name) and not self.manifest_path(p.name).exists()
        )

    def find_by_repo(self, repo: str) -> ModelEntry | None:
        return next((e for e in self.list_models() if e.repo == repo), None)

    def verify(self, name: str, *, workers: int | None = None) -> VerifyResult:
        """Hash every file of `name` (a store name, or the hub repo id it was pulled from)
        against its manifest; on success refresh the stamp."""
        m = self.read_manifest(name)
        if m is None and (e := self.find_by_repo(name)) is not None:
            name, m = e.name, self.read_manifest(e.name)
        if m is None:
            raise ModelError(
                f"Model {name} is not in the store at {self.root}",
                model=name,
                why="no manifest for it on this node",
                fix="import or pull it first, or list what is there",
                command="raylm model list",
            )
        res = verify_dir(self.path_of(m), m, workers=workers)
        if res.ok:
            self.write_stamp(m)
        else:
            self.stamp_path(name).unlink(missing_ok=True)
        return res

    # ---- bringing models in: raylm.models.importer (imported late: it imports this module)

    def resolve(self, ref: str | None) -> ModelEntry:
        """Turn what a user typed into a model directory (see `importer.resolve`)."""
        from raylm.models import importer

        return importer.resolve(self, ref)

    def ensure_demo(self) -> ModelEntry:
        """The demo model, converted on first use and redone when damaged."""
        from raylm.models import importer

        return importer.ensure_demo(self)

    def import_gguf(self, file: Path, name: str | None = None) -> ModelEntry:
        """Convert a GGUF file into an HF-format model directory in the store."""
        from raylm.models import importer

        return importer.import_gguf(self, file, name)

    def import_dir(self, path: Path, name: str | None = None) -> ModelEntry:
        """Register an HF-format directory in place: hash its files and write a manifest."""
        from raylm.models import importer

        return importer.import_dir(self, path, name)

    def import_path(self, path: Path, name: str | None = None) -> ModelEntry:
        """`raylm model import`: a .gguf file is converted, a directory registered in place."""
        from raylm.models import importer

        return importer.import_path(self, path, name)

    # ---- installing --------------------------------------------------------------------

    def install_dir(self, work: Path, manifest: Manifest) -> ModelEntry:
        """Move a complete, hashed directory into place (pulls, imports); caller holds the lock."""
        self._install(work, manifest)
        return self.entry_from(manifest)

    def _install(self, work: Path, manifest: Manifest) -> None:
        final = self.model_dir(manifest.name)
        self.forget(manifest.name)
        if final.exists():
            trash = self.tmp_dir() / f"{manifest.name}-old-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        os.rename(work, final)
        self.write_manifest(manifest)
        self.write_stamp(manifest)

    # ---- removal -----------------------------------------------------------------------

    def remove(self, name: str) -> bool:
        """Delete a model from this node's store. Files registered in place are kept.

        Returns False when there was nothing to remove.
        """
        check_name(name)
        with self.lock(name):
            m = self.read_manifest(name)
            d = self.model_dir(name)
            found = m is not None or d.exists()
            self.forget(name)
            if (m is None or m.external_path is None) and d.exists():
                trash = self.tmp_dir() / f"{name}-rm-{uuid.uuid4().hex[:8]}"
                os.rename(d, trash)
                shutil.rmtree(trash, ignore_errors=True)
            return found
