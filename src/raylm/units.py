"""Byte counts as raylm prints them (one wording everywhere: `12.3 GiB`)."""

from __future__ import annotations

GIB = 1024**3
MIB = 1024**2


def gib_text(b: float, digits: int = 1) -> str:
    """`b` bytes in GiB: `12.3 GiB`."""
    return f"{b / GIB:.{digits}f} GiB"


def size_text(b: float) -> str:
    """A file or model size: GiB from 1 GiB up (`1.25 GiB`), MiB below (`512.0 MiB`)."""
    return gib_text(b, 2) if b >= GIB else f"{b / MIB:.1f} MiB"
