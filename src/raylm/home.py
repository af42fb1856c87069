"""Where raylm keeps its state on a node: `$RAYLM_HOME`, default `~/.raylm`."""

from __future__ import annotations

import os
from pathlib import Path


def raylm_home() -> Path:
    """The root of this node's raylm state (model store, logs, cluster files)."""
    return Path(os.environ.get("RAYLM_HOME") or Path.home() / ".raylm").expanduser()


def models_dir() -> Path:
    """The model store root: one sub-directory per model."""
    return raylm_home() / "models"


def logs_dir() -> Path:
    """Per-replica vLLM logs and raylm's own logs."""
    return raylm_home() / "logs"


def cluster_dir() -> Path:
    """Files of a cluster raylm started on this node (token, fingerprint, pids)."""
    return raylm_home() / "cluster"
