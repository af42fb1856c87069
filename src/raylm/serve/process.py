"""The vLLM child process of one rank: start it in its own process group, stop it whole.

This is the one place raylm spawns `vllm serve`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the supervisor's worker dies (node loss, ray.kill), its vLLM must not linger.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineProcess:
    """A running `vllm serve` and every process it spawned (one process group)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives with the process
        self._log.write(f"\n=== raylm: starting {' '.join(argv)}\n".encode())
        self.popen = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        logger.info("started vLLM pid %d, log %s", self.pid, log_path)

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.popen.poll()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL what is left after `grace_s`."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGTERM:
                # A SIGSTOPped (hung) engine must be continued to act on SIGTERM.
                try:
                    os.killpg(self.pid, signal.SIGCONT)
                except ProcessLookupError:
                    break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(self.pid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        self.popen.poll()
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        """The last lines of the log, to explain a failure."""
        try:
            text = self.log_path.read_bytes()[-16384:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
