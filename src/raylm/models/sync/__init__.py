"""Verify and copy a model on every node of a Ray cluster, through Ray itself.

No SSH and no shared filesystem: one agent actor per node, pinned there with a hard
NodeAffinitySchedulingStrategy, works on that node's store (its `$RAYLM_HOME`, as set in
the node's Ray processes). A receiving agent asks the source node's agent, through Ray,
for the files it lacks. Two transports carry the bytes:

- `stream` (tried first by `auto`): the receiver listens on its node IP, hands a one-time
  token and the port to the sender through Ray, and the sender `sendfile()`s the byte
  range into that connection. Close to a plain copy's speed.
- `object-store`: 8 MiB chunks as Ray objects (`read_chunk`), a few in flight. Works
  wherever Ray works (no extra port between nodes) at a fraction of the speed; `auto`
  falls back to it when no stream connection comes within 10 s.

Both share the rest:

- bounded memory: one 8 MiB buffer per file in flight (stream), or at most
  `parallel_files * PIPELINE_DEPTH` chunks (object store), whatever the model size;
- resumable: a file is written to `<file>.part`, always a prefix of the real file, so the
  next sync hashes what is there and asks only for the missing tail; files already
  present with the right sha256 are not sent at all;
- checked on arrival and atomic: the sha256 is computed while writing; only a complete
  file with the manifest's sha256 is renamed to its final path, and the node's manifest
  is written after every file, so a half-synced copy never reads as verified;
- a full disk is found before writing (free space vs bytes to send) or, if space runs
  out mid-way, the `.part` is removed and the node reports it; nothing partial ever sits
  at a final path.

The package is split by concept: `transport` moves bytes between two agents, `agent` is
the Ray actor on each node, `driver` is what the CLI and `raylm serve` call, `schema`
holds the models their calls pass. The names
below are the public surface, importable from `raylm.models.sync` as before.
"""

from raylm.models.sync.driver import (
    list_on_nodes,
    remove_on_nodes,
    resolve_nodes,
    sync_model,
    verify_on_nodes,
)
from raylm.models.sync.schema import AgentInfo, NodeProgress, ReceiveRequest, SyncReport
from raylm.models.sync.transport import (
    CHUNK,
    PARALLEL_FILES,
    PIPELINE_DEPTH,
    STREAM_CONNECT_TIMEOUT_S,
    STREAM_IDLE_TIMEOUT_S,
    TRANSPORTS,
    TransferSettings,
)

__all__ = [
    "CHUNK",
    "PARALLEL_FILES",
    "PIPELINE_DEPTH",
    "STREAM_CONNECT_TIMEOUT_S",
    "STREAM_IDLE_TIMEOUT_S",
    "TRANSPORTS",
    "AgentInfo",
    "NodeProgress",
    "ReceiveRequest",
    "SyncReport",
    "TransferSettings",
    "list_on_nodes",
    "remove_on_nodes",
    "resolve_nodes",
    "sync_model",
    "verify_on_nodes",
]
