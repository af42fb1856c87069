"""Follows one engine's KV-cache events (vLLM's ZMQ publisher) into a `CachedBlocks`.

The engine publishes on a Unix socket in a directory only this user can open, so prompts'
token ids never leave the node; raylm's supervisor of the replica's rank 0 subscribes
here and hands the gateway block keys only. When a batch is missed (the publisher's
high-water mark, a slow reader) the gap is asked of the engine's replay socket, which
keeps its last `buffer_steps` batches; what is older than that is counted as a gap.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import msgspec
import zmq

from raylm.kv.blocks import BlockDelta, CachedBlocks
from raylm.kv.endpoints import TOPIC, endpoints

logger = logging.getLogger(__name__)

_END_SEQ = -1


class EventSubscriber:
    """A thread that applies an engine's event batches to `blocks`, in sequence order."""

    def __init__(self, directory: Path) -> None:
        self.blocks = CachedBlocks()
        self._pub, self._replay = endpoints(directory)
        self._dir = directory
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_seq = 0
        self._thread = threading.Thread(target=self._run, name="raylm-kv-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for name in ("pub", "replay"):
            (self._dir / name).unlink(missing_ok=True)
        if self._dir.exists():
            os.rmdir(self._dir)

    def delta(self, epoch: str | None, since: int) -> BlockDelta:
        with self._lock:
            return self.blocks.delta(epoch, since)

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
        sub.connect(self._pub)
        try:
            while not self._stop.is_set():
                if not sub.poll(200):
                    continue
                _, seq_bytes, payload = sub.recv_multipart()
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                if seq > self._next_seq:
                    self._ask_replay(ctx, seq)
                self._apply(seq, payload)
        except Exception:  # the index only helps routing: log, never take the rank down
            logger.exception("KV event subscriber stopped")
        finally:
            sub.close(linger=0)

    def _apply(self, seq: int, payload: bytes) -> None:
        if seq < self._next_seq:
            return  # already applied (a replayed batch)
        batch = msgspec.msgpack.decode(payload)
        events = batch[1] if isinstance(batch, list) and len(batch) > 1 else []
        with self._lock:
            self.blocks.apply_batch(events)
        self._next_seq = seq + 1

    def _ask_replay(self, ctx: zmq.Context[zmq.Socket[bytes]], upto: int) -> None:
        """Fetch batches [next_seq, upto) from the replay socket."""
        req = ctx.socket(zmq.DEALER)
        req.connect(self._replay)
        try:
            req.send_multipart([b"", self._next_seq.to_bytes(8, "big")])
            while req.poll(2000):
                _, _, seq_bytes, payload = req.recv_multipart()
                seq = int.from_bytes(seq_bytes, "big", signed=True)
                if seq == _END_SEQ or seq >= upto:
                    break
                if seq > self._next_seq:  # older than the engine's buffer: lost
                    with self._lock:
                        self.blocks.gaps += seq - self._next_seq
                self._apply(seq, payload)
        finally:
            req.close(linger=0)
        if self._next_seq < upto:
            with self._lock:
                self.blocks.gaps += upto - self._next_seq
            self._next_seq = upto
