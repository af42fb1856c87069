"""`raylm doctor`: every check on every node, each PASS / WARN / FAIL with the node and the fix.

The checks run where the problem lives: one Ray task pinned on each node reads its
versions, interfaces, variables, /dev/shm and disk, and opens TCP connections to every
other node's Ray ports and to a probe port that a small actor on each node listens on.

- `report`: the `Check` finding, its `CheckStatus`, and the `--json` `DoctorReport`.
- `probes`: the code that runs on each node (what it reads, typed as `NodeProbe`).
- `checks`: pure checks of what each node has (versions, interface, variables, /dev/shm,
  disk, GPUs, clock).
- `network`: pure checks between nodes (reachability, auth, exposed ports).
- `runner`: `run_doctor`, which sends the probes through Ray and runs the checks.
"""

from raylm.cluster.doctor.checks import check_gpu_memory, check_gpus, check_shm
from raylm.cluster.doctor.report import Check, CheckStatus, DoctorReport
from raylm.cluster.doctor.runner import run_doctor

__all__ = [
    "Check",
    "CheckStatus",
    "DoctorReport",
    "check_gpu_memory",
    "check_gpus",
    "check_shm",
    "run_doctor",
]
