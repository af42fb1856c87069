"""Stopping a `raylm serve` a test or benchmark started, as a user's Ctrl+C would."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_serve(proc: subprocess.Popen[bytes], timeout: float = 180) -> int:
    """SIGTERM (raylm drains and stops what it started), then SIGKILL to the process group
    (started with start_new_session) if it is still there after `timeout`. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return int(proc.returncode or 0)
