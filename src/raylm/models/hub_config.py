"""Fetch a hub model's config.json (and its safetensors index) for planning, no weights.

The hub client retries an unreachable host for ~30 s; a TCP connect is tried first so that
an unreachable hub fails at once (or falls back to a cached copy).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from raylm.errors import ModelError, exception_line
from raylm.home import raylm_home

log = logging.getLogger(__name__)


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """A TCP connect to the hub: the client retries for ~30 s, we want to fail fast."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True  # a proxy decides; let the client try
    u = urlsplit(endpoint)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_hub_config(repo_id: str, *, revision: str | None = None) -> Path:
    """Download a hub model's config.json (and its safetensors index, if any); no weights.

    Honors HF_ENDPOINT and HF_TOKEN; files land in `$RAYLM_HOME/cache/hub`. Returns the
    directory holding config.json. When the hub cannot be reached, a cached copy is used,
    else ModelError is raised at once.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    kw: dict[str, Any] = {
        "repo_id": repo_id,
        "revision": revision,
        "cache_dir": raylm_home() / "cache" / "hub",
        "endpoint": endpoint,
        "etag_timeout": 5,
        "local_files_only": not _reachable(endpoint),
    }
    try:
        cfg = Path(hf_hub_download(filename="config.json", **kw))
    except LocalEntryNotFoundError as e:
        raise ModelError(
            f"Cannot fetch {repo_id}'s config.json from {endpoint}",
            model=repo_id,
            why="the hub cannot be reached and the file is not cached",
            fix="set HF_ENDPOINT to a reachable mirror, or pass a local model directory",
        ) from e
    except EntryNotFoundError as e:
        raise ModelError(
            f"{repo_id} has no config.json on {endpoint}",
            model=repo_id,
            why=str(e).splitlines()[0],
            fix="check the repository id; only Hugging Face-format models can be planned",
        ) from e
    except Exception as e:  # the hub client raises many HTTP/OS types; all mean "not fetched"
        raise ModelError(
            f"Cannot fetch {repo_id}'s config.json from {endpoint}",
            model=repo_id,
            why=exception_line(e),
            fix="check the id, HF_TOKEN for gated models, or set HF_ENDPOINT to a mirror",
        ) from e
    try:
        hf_hub_download(filename="model.safetensors.index.json", **kw)
    except Exception as e:  # single-file models have no index: weights get estimated
        log.debug("no safetensors index for %s: %s", repo_id, type(e).__name__)
    return cfg.parent
