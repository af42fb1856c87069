"""How models enter the store: references resolved, GGUF files converted, dirs registered.

`ModelStore.resolve`, `ensure_demo`, `import_gguf`, `import_dir` and `import_path` delegate
here; the storage itself (paths, locks, manifests, stamps) is `raylm.models.store`'s.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from pathlib import Path

from raylm.errors import ModelError
from raylm.models.gguf import DEMO_NAME, convert_gguf, demo_gguf_path
from raylm.models.manifest import Manifest, build_manifest, list_model_files, sha256_file
from raylm.models.store import ModelEntry, ModelStore, check_name, default_name

log = logging.getLogger(__name__)


def resolve(store: ModelStore, ref: str | None) -> ModelEntry:
    """Turn what a user typed into a model directory.

    - None: the demo model, imported from its GGUF on first use, reused afterwards, and
      re-imported when its copy is incomplete or damaged.
    - A path to a `.gguf` file: imported (converted) once, named after the file.
    - A path to an HF-format directory: used in place as it is; it is not registered
      and not hashed (`verified` is False; `raylm model import DIR` registers it).
    - A store name, or the hub repo id it was pulled from.
    """
    if ref is None or ref == DEMO_NAME:
        return store.ensure_demo()
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        name = default_name(p.stem.lower())
        e = store.get(name)
        if e is not None and (e.verified or store.verify(name).ok):
            return store.get(name) or e
        return store.import_gguf(p, name)
    if p.is_dir():
        return _bare_dir(store, p.resolve())
    if (e := store.get(ref)) is not None or (e := store.find_by_repo(ref)) is not None:
        return e
    if p.is_absolute() or ref.startswith((".", "~")):
        raise ModelError(
            f"Model path {ref} does not exist",
            model=ref,
            fix="give an existing Hugging Face-format model directory or .gguf file",
        )
    names = ", ".join(e.name for e in store.list_models()) or "none"
    hint = f"raylm model pull {ref}" if "/" in ref else "raylm model import PATH --name " + ref
    raise ModelError(
        f"Model {ref!r} is not in the store ({store.root})",
        model=ref,
        why=f"models there: {names}",
        fix="pull it from a hub, import a local directory or GGUF file, or serve a path",
        command=hint,
    )


def _require_hf_dir(p: Path) -> None:
    if not (p / "config.json").is_file():
        raise ModelError(
            f"{p} is not a Hugging Face-format model directory",
            model=str(p),
            why="it has no config.json",
            fix="point at the directory holding config.json, the tokenizer and the weights",
        )


def _bare_dir(store: ModelStore, p: Path) -> ModelEntry:
    _require_hf_dir(p)
    for m in (store.read_manifest(e.name) for e in store.list_models()):
        if m is not None and store.path_of(m).resolve() == p:
            return store.entry_from(m)
    files = list_model_files(p)
    return ModelEntry(
        name=p.name,
        path=p,
        source="local",
        size_bytes=sum((p / f).stat().st_size for f in files),
    )


def ensure_demo(store: ModelStore) -> ModelEntry:
    """The demo model, converted on first use and redone when damaged."""
    e = store.get(DEMO_NAME)
    if e is not None and e.verified:
        return e
    if e is not None:
        res = store.verify(DEMO_NAME)
        if res.ok:
            return store.get(DEMO_NAME) or e
        log.warning("demo model copy is damaged (%s); importing it again", res.summary())
    return store.import_gguf(demo_gguf_path(), DEMO_NAME)


def import_gguf(store: ModelStore, file: Path, name: str | None = None) -> ModelEntry:
    """Convert a GGUF file into an HF-format model directory in the store.

    Runs under the model's lock; another process that finished the same import while
    this one waited is reused. The converted directory is renamed into place and the
    manifest written last, so an interrupted import leaves no manifest and is redone.
    """
    file = Path(file).expanduser().resolve()
    if not file.is_file():
        raise ModelError(
            f"GGUF file {file} does not exist",
            model=str(file),
            fix="give the path to an existing .gguf file",
        )
    name = check_name(name or default_name(file.stem.lower()))
    with store.lock(name):
        existing = store.read_manifest(name)
        revision = f"gguf-sha256:{sha256_file(file)}"
        if (
            existing is not None
            and existing.revision == revision
            and (store.stamp_ok(existing) or store.verify(name).ok)
        ):
            return store.entry_from(existing)
        _clean_tmp(store, name)
        work = store.tmp_dir() / f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            log.info("converting %s into %s", file, store.model_dir(name))
            convert_gguf(file, work)
            manifest = build_manifest(work, name=name, source="gguf", revision=revision)
            entry = store.install_dir(work, manifest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return entry


def import_dir(store: ModelStore, path: Path, name: str | None = None) -> ModelEntry:
    """Register an HF-format directory in place: hash its files and write a manifest.

    The files stay where they are (nothing is copied); `sync` places them at the same
    absolute path on the other nodes.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise ModelError(
            f"{p} is not a directory", model=str(p), fix="give a model directory or .gguf"
        )
    _require_hf_dir(p)
    name = check_name(name or default_name(p.name))
    with store.lock(name):
        in_store = p.parent == store.root.resolve()
        if in_store and p.name != name:
            raise ModelError(
                f"{p} is inside the store under another name",
                model=name,
                fix=f"import it as {p.name}",
            )
        manifest = build_manifest(
            p,
            name=name,
            source="local",
            revision="",
            external_path=None if in_store else str(p),
        )
        digest = sha256_file_list(manifest)
        manifest.revision = f"content-sha256:{digest[:16]}"
        store.forget(name)
        store.write_manifest(manifest)
        store.write_stamp(manifest)
        return store.entry_from(manifest)


def import_path(store: ModelStore, path: Path, name: str | None = None) -> ModelEntry:
    """`raylm model import`: a .gguf file is converted, a directory registered in place."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return store.import_gguf(p, name)
    if p.is_file():
        raise ModelError(
            f"{p} is a file but not a .gguf file",
            model=str(p),
            fix="import a .gguf file or a Hugging Face-format model directory",
        )
    return store.import_dir(p, name)


def _clean_tmp(store: ModelStore, name: str) -> None:
    # Only called under the model's lock, so no live import of `name` owns these.
    for p in store.tmp_dir().glob(f"{name}-*"):
        if p.is_dir() and not p.name.startswith(f"{name}-pull"):
            shutil.rmtree(p, ignore_errors=True)


def sha256_file_list(manifest: Manifest) -> str:
    """A content id of a whole model: the sha256 of its sorted (path, sha256) list."""
    h = hashlib.sha256()
    for f in sorted(manifest.files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()
