"""The garbage collector's settings for a process that serves the gateway.

With CPython's defaults, a gateway at saturation ran a full collection about twice a
second, each 25-35 ms over the ~50,000 objects its imports leave behind: every request in
flight waited, and they made its p99 (30-45 ms against a 12 ms median,
benchmarks/bench_gateway_capacity.py). Two changes, measured together there:
- `gc.freeze()` once started: what exists then lives as long as the process, so full
  collections stop walking it;
- a young generation of 10,000 allocations instead of 700: a request's objects die before
  a collection sees them, so few are promoted. The older generations keep their default
  ratios (10, 10): full collections stay as frequent per allocation as before, only
  cheap, so cycles of dead objects do not pile up.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Call once a serving process has started (imports done, gateway built)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
