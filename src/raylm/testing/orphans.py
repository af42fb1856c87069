"""Leftovers of test clusters whose owning process died without tearing them down.

A NetnsCluster names everything it creates `rl<owner pid>x<n>...` (bridge, veths,
namespaces, /tmp roots). A suite killed by SIGKILL, a lost CI runner or a machine restart
leaves them behind, and the next suite on that host then finds its subnet taken. Anything
whose owner pid no longer runs is an orphan and is removed here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

_NAME = re.compile(r"^rl(\d+)x\d+(br|n\d+|v\d+)")


def _owner_gone(name: str, live: set[int]) -> bool:
    # The prefix keeps pid % 100000 (`live` holds running pids the same way); any live
    # process with a matching number counts as the owner, erring towards leaving things alone.
    m = _NAME.match(name)
    return m is not None and int(m.group(1)) not in live


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()]


def _link_names() -> list[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return [line.split()[0].split("@")[0] for line in out.splitlines() if line.split()]


def remove_orphans() -> list[str]:
    """Kill what still runs in orphaned namespaces and delete them, their links and their
    /tmp roots. Returns what was removed (for the log)."""
    removed: list[str] = []
    live = {int(e) % 100000 for e in os.listdir("/proc") if e.isdigit()}
    for ns in _netns_names():
        if not _owner_gone(ns, live):
            continue
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        alive = [int(p) for p in pids.stdout.split() if p.strip().isdigit()]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists()]
            time.sleep(0.05)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        removed.append(f"netns {ns}")
    for link in _link_names():
        if _owner_gone(link, live):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
            removed.append(f"link {link}")
    for root in Path("/tmp").glob("rl*x*n*-*"):
        if root.is_dir() and _owner_gone(root.name, live):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(f"dir {root}")
    if removed:
        log.warning("removed leftovers of dead test clusters: %s", ", ".join(removed))
    return removed
