"""Where an engine publishes its KV-cache events, and vLLM's `--kv-events-config` for it.

The sockets are Unix sockets in a directory only this user can open (mode 0700), so the
prompts' token ids in the events never leave the node.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

TOPIC = b"kv"


def event_dir() -> Path:
    """A private directory for one engine's event sockets (short: Unix socket paths are
    limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="rkv-"))  # mode 0700


def endpoints(directory: Path) -> tuple[str, str]:
    """(publish, replay) endpoints of the engine whose sockets live in `directory`."""
    return f"ipc://{directory}/pub", f"ipc://{directory}/replay"


def kv_events_config(directory: Path) -> dict[str, object]:
    """vLLM's `--kv-events-config` for an engine publishing into `directory`. There is no
    form without a directory: vLLM's default endpoint listens on every interface."""
    pub, replay = endpoints(directory)
    return {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": pub,
        "replay_endpoint": replay,
        "topic": TOPIC.decode(),
    }
