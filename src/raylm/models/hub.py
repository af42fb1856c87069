"""Pull a model from a hub (Hugging Face, ModelScope) into the store, checked file by file.

Downloads go through the hubs' own libraries into a directory named after the resolved
commit (`<root>/.raylm/tmp/<name>-pull-<commit>`), which their resume logic keeps across
interruptions: running the same pull again fetches only what is missing. Every file is
then hashed and checked against the hub's own record (LFS sha256, or the git blob id of
small files) before the directory is moved into the store and its manifest written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from raylm.errors import ModelError, exception_line
from raylm.models.manifest import FileEntry, Manifest, hash_files
from raylm.models.store import ModelEntry, ModelStore, check_name, default_name
from raylm.units import gib_text

log = logging.getLogger(__name__)

HubSource = Literal["hf", "modelscope"]
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository and what the hub says its content is."""

    path: str
    size: int | None
    sha256: str | None  # LFS files (large weights)
    git_blob_sha1: str | None  # regular git files (configs, tokenizer)


def hf_endpoint() -> str:
    """The Hugging Face endpoint in effect now (`HF_ENDPOINT`, e.g. a mirror)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file: sha1 over 'blob <size>\\0' and the bytes."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def pull(
    repo: str,
    *,
    source: HubSource = "hf",
    revision: str | None = None,
    include: Sequence[str] | None = None,
    name: str | None = None,
    store: ModelStore | None = None,
) -> ModelEntry:
    """Download `repo` into the store and return its entry; reuses an identical copy."""
    store = store or ModelStore()
    name = check_name(name or default_name(repo))
    patterns = list(include) if include else None
    if source == "hf":
        commit, files = _hf_listing(repo, revision)
    elif source == "modelscope":
        commit, files = _ms_listing(repo, revision)
    else:
        raise ModelError(
            f"Unknown model source {source!r}", model=repo, fix="use --source hf or modelscope"
        )
    files = _filter(files, patterns)
    if not files:
        raise ModelError(
            f"No file of {repo}@{commit[:12]} matches {patterns}",
            model=repo,
            fix="check the --include patterns (shell-style, e.g. '*.safetensors')",
        )
    with store.lock(name):
        existing = store.read_manifest(name)
        if (
            existing is not None
            and existing.repo == repo
            and existing.revision == commit
            and {f.path for f in existing.files} == {f.path for f in files}
            and (store.stamp_ok(existing) or store.verify(name).ok)
        ):
            return store.entry_from(existing)
        work = store.tmp_dir() / f"{name}-pull-{commit[:12]}"
        _check_space(store, work, files, repo)
        if source == "hf":
            _hf_download(repo, commit, patterns, work)
        else:
            _ms_download(repo, commit, patterns, work)
        manifest = _check_download(work, files, name=name, source=source, repo=repo, rev=commit)
        shutil.rmtree(work / ".cache", ignore_errors=True)
        shutil.rmtree(work / "._____temp", ignore_errors=True)
        for p in sorted(work.rglob("*"), reverse=True):
            rel = p.relative_to(work).as_posix()
            if p.is_file() and manifest.file(rel) is None:
                p.unlink()  # left over from an earlier pull with other --include patterns
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        return store.install_dir(work, manifest)


def _filter(files: list[RemoteFile], patterns: list[str] | None) -> list[RemoteFile]:
    from huggingface_hub.utils._paths import filter_repo_objects

    keep = set(filter_repo_objects([f.path for f in files], allow_patterns=patterns))
    return [f for f in files if f.path in keep]


def _check_space(store: ModelStore, work: Path, files: list[RemoteFile], repo: str) -> None:
    have = sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) if work.exists() else 0
    need = sum(f.size or 0 for f in files) - have
    store.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.root).free
    if need > free:
        raise ModelError(
            f"Not enough disk space to pull {repo}",
            model=repo,
            why=f"it needs {gib_text(need, 2)} more under {store.root}, "
            f"which has {gib_text(free, 2)} free",
            fix="free space, or point RAYLM_HOME at a larger disk",
        )


def _check_download(
    work: Path, files: list[RemoteFile], *, name: str, source: str, repo: str, rev: str
) -> Manifest:
    missing = [f.path for f in files if not (work / f.path).is_file()]
    if missing:
        raise ModelError(
            f"The download of {repo} is incomplete",
            model=repo,
            why=f"missing after download: {', '.join(missing[:5])}",
            fix="run the same pull again; it resumes",
            command=f"raylm model pull {repo} --revision {rev}",
        )
    digests = hash_files(work, [f.path for f in files])
    bad: list[str] = []
    for f in files:
        p = work / f.path
        size = p.stat().st_size
        if f.size is not None and size != f.size:
            bad.append(f"{f.path} (size {size}, hub says {f.size})")
        elif f.sha256 is not None and digests[f.path] != f.sha256.lower():
            bad.append(f"{f.path} (sha256 {digests[f.path][:12]}..., hub says {f.sha256[:12]}...)")
        elif f.sha256 is None and f.git_blob_sha1 and git_blob_sha1(p) != f.git_blob_sha1:
            bad.append(f"{f.path} (git blob id differs from the hub's)")
        else:
            continue
        p.unlink()  # so the next pull fetches it again instead of trusting it
        for meta in (work / ".cache").rglob(f"{Path(f.path).name}.*"):
            meta.unlink(missing_ok=True)
    if bad:
        raise ModelError(
            f"Downloaded files of {repo} do not match the hub's checksums",
            model=repo,
            why="; ".join(bad[:5]),
            fix="the bad files were deleted; pull again to fetch them again "
            "(if it repeats, the mirror in HF_ENDPOINT may serve other bytes)",
            command=f"raylm model pull {repo} --revision {rev}",
        )
    entries = [
        FileEntry(path=f.path, size=(work / f.path).stat().st_size, sha256=digests[f.path])
        for f in sorted(files, key=lambda f: f.path)
    ]
    return Manifest(name=name, source=source, repo=repo, revision=rev, files=entries)


# ---- Hugging Face ----------------------------------------------------------------------


def _hf_unreachable(repo: str, endpoint: str, e: BaseException) -> ModelError:
    return ModelError(
        f"Cannot reach the Hugging Face hub at {endpoint} to pull {repo}",
        model=repo,
        why=exception_line(e)[:300],
        fix="check the network, set HF_ENDPOINT to a reachable mirror, "
        "or copy the model here and import it",
        command="raylm model import /path/to/model-dir",
    )


def _hf_listing(repo: str, revision: str | None) -> tuple[str, list[RemoteFile]]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hf_endpoint()
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelError(
            f"Cannot pull {repo}: Hugging Face offline mode is on",
            model=repo,
            why="HF_HUB_OFFLINE is set",
            fix="unset HF_HUB_OFFLINE, or import a local copy",
            command="raylm model import /path/to/model-dir",
        )
    try:
        info: Any = HfApi(endpoint=endpoint).model_info(
            repo, revision=revision, files_metadata=True, timeout=CONNECT_TIMEOUT_S
        )
    except GatedRepoError as e:
        raise ModelError(
            f"{repo} is gated on {endpoint}",
            model=repo,
            why="the hub needs an accepted licence and a token",
            fix="accept its terms on the hub's web page and set HF_TOKEN",
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelError(
            f"Repository {repo} not found on {endpoint}",
            model=repo,
            why="it does not exist, or it is private and no valid HF_TOKEN is set",
            fix="check the id (Org/Name) or set HF_TOKEN",
        ) from e
    except RevisionNotFoundError as e:
        raise ModelError(
            f"Revision {revision} of {repo} not found on {endpoint}",
            model=repo,
            fix="give a branch, tag or commit that exists",
        ) from e
    except OfflineModeIsEnabled as e:
        raise _hf_unreachable(repo, endpoint, e) from e
    except HfHubHTTPError as e:
        raise ModelError(
            f"The hub at {endpoint} refused the listing of {repo}",
            model=repo,
            why=str(e).splitlines()[0][:300],
            fix="retry later, or check HF_ENDPOINT and HF_TOKEN",
        ) from e
    except Exception as e:  # the HTTP library's connection and timeout errors
        raise _hf_unreachable(repo, endpoint, e) from e
    files = [
        RemoteFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs is not None else s.size,
            sha256=s.lfs.sha256 if s.lfs is not None else None,
            git_blob_sha1=s.blob_id,
        )
        for s in info.siblings or []
    ]
    if not info.sha:
        raise ModelError(f"The hub gave no commit for {repo}", model=repo, fix="retry")
    return str(info.sha), files


def _hf_download(repo: str, commit: str, patterns: list[str] | None, work: Path) -> None:
    from huggingface_hub import snapshot_download

    endpoint = hf_endpoint()
    try:
        snapshot_download(
            repo,
            revision=commit,
            local_dir=work,
            allow_patterns=patterns,
            endpoint=endpoint,
            etag_timeout=CONNECT_TIMEOUT_S,
        )
    except KeyboardInterrupt:
        raise
    except Exception as e:
        raise ModelError(
            f"Downloading {repo} from {endpoint} failed",
            model=repo,
            why=exception_line(e)[:300],
            fix="run the same pull again; completed files are kept and the rest resumes",
            command=f"raylm model pull {repo} --revision {commit}",
        ) from e


# ---- ModelScope ------------------------------------------------------------------------


def _ms_api() -> Any:
    try:
        from modelscope.hub.api import HubApi
    except ImportError as e:
        raise ModelError(
            "ModelScope pulls need the modelscope library",
            why=f"it cannot be imported ({e})",
            fix="install it",
            command=".venv/bin/pip install modelscope",
        ) from e
    return HubApi(timeout=int(CONNECT_TIMEOUT_S), max_retries=1)


def _ms_listing(repo: str, revision: str | None) -> tuple[str, list[RemoteFile]]:
    api = _ms_api()
    domain = os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get(
        "MODELSCOPE_DOMAIN", "www.modelscope.cn"
    )
    try:
        items: list[dict[str, Any]] = api.get_model_files(repo, revision=revision, recursive=True)
    except Exception as e:  # modelscope raises requests' and its own errors
        raise ModelError(
            f"Cannot list {repo} on ModelScope ({domain})",
            model=repo,
            why=exception_line(e)[:300],
            fix="check the id and the network, or set MODELSCOPE_ENDPOINT to a reachable site",
        ) from e
    files = [
        RemoteFile(
            path=str(it["Path"]),
            size=int(it["Size"]) if it.get("Size") is not None else None,
            sha256=(it.get("Sha256") or None),
            git_blob_sha1=None,
        )
        for it in items
        if it.get("Type", "blob") == "blob"
    ]
    commit = revision or "master"  # ModelScope lists no repo-wide commit id
    return commit, files


def _ms_download(repo: str, commit: str, patterns: list[str] | None, work: Path) -> None:
    _ms_api()
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        snapshot_download(repo, revision=commit, local_dir=str(work), allow_patterns=patterns)
    except Exception as e:
        raise ModelError(
            f"Downloading {repo} from ModelScope failed",
            model=repo,
            why=exception_line(e)[:300],
            fix="run the same pull again; it resumes",
            command=f"raylm model pull {repo} --source modelscope",
        ) from e
