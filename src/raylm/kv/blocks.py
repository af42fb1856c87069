"""Which prompt blocks a replica's engine holds in its prefix cache, as raylm's block keys.

vLLM publishes what its KV cache stores and evicts (`--kv-events-config`: `BlockStored`
with the block's token ids, `BlockRemoved`, `AllBlocksCleared`). Its own block hashes
depend on its hash function and seed, so raylm does not reuse them: it keys each block by
its token ids chained onto its parent's key (`block_keys`), which the gateway computes the
same way from a prompt's token ids. Two prompts share their first n keys exactly when they
share their first n blocks of tokens: a match is always a true prefix.

`CachedBlocks` is one replica's set, kept from its event stream, with a change log so
readers (the gateway) can follow it by deltas.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ROOT_KEY = 0
"""The parent key of a prompt's first block."""


def block_keys(tokens: Sequence[int], block_size: int, parent: int = ROOT_KEY) -> list[int]:
    """The chained keys of `tokens`' whole blocks: key i covers blocks 0..i. Python's hash
    of a tuple of ints is the same in every process of one Python build (only str and bytes
    hashes are salted), so the gateway and the replicas' supervisors agree."""
    out: list[int] = []
    # zip over one iterator cuts the whole blocks as tuples in C (a partial tail is dropped)
    for block in zip(*[iter(tokens)] * block_size, strict=False):
        parent = hash((parent, block))
        out.append(parent)
    return out


class BlockCursor(BaseModel):
    """Where a reader of one replica's cached blocks is."""

    model_config = ConfigDict(extra="forbid")

    epoch: str | None = Field(default=None, description="The stream read so far; None: none.")
    seq: int = Field(default=0, description="Changes already read from that stream.")


class BlockDelta(BaseModel):
    """What changed in one replica's cached blocks since a reader's cursor."""

    model_config = ConfigDict(extra="forbid")

    epoch: str = Field(description="Identifies this event stream; a new one means start over.")
    seq: int = Field(description="Cursor after this delta: pass it back to get the next one.")
    reset: bool = Field(description="True: `added` is the whole set; drop what you held.")
    added: list[int] = Field(description="Block keys now cached.")
    removed: list[int] = Field(description="Block keys evicted.")
    block_size: int = Field(description="Tokens per block in this engine (0: not known yet).")
    gaps: int = Field(description="Events that could not be keyed (a parent never seen).")


class CachedBlocks:
    """One engine's cached blocks as raylm keys, with a bounded change log."""

    def __init__(self, log_limit: int = 200_000) -> None:
        self.epoch = secrets.token_hex(4)
        self.block_size = 0
        self.gaps = 0
        self._key_of: dict[Any, int] = {}  # engine block hash -> raylm key
        self._log: list[tuple[bool, int]] = []  # (added?, key), oldest first
        self._log_start = 0  # seq of self._log[0]
        self._log_limit = log_limit

    @property
    def seq(self) -> int:
        return self._log_start + len(self._log)

    def keys(self) -> set[int]:
        return set(self._key_of.values())

    def apply_batch(self, events: Iterable[Any]) -> None:
        """Apply one decoded `KVEventBatch`'s events (maps with a `type` tag)."""
        for ev in events:
            kind = ev.get("type") if isinstance(ev, dict) else None
            if kind == "BlockStored":
                self._stored(ev)
            elif kind == "BlockRemoved":
                for h in ev.get("block_hashes") or []:
                    self._drop(h)
            elif kind == "AllBlocksCleared":
                for h in list(self._key_of):
                    self._drop(h)

    def _stored(self, ev: dict[str, Any]) -> None:
        hashes = ev.get("block_hashes") or []
        size = int(ev.get("block_size") or 0)
        tokens = ev.get("token_ids") or []
        # A LoRA or other extra keys change what the engine matches on: such blocks are not
        # plain-prompt blocks, and keying them by tokens alone would claim false hits.
        extra = ev.get("extra_keys") or []  # per block; None where a block has none
        if not hashes or size <= 0 or ev.get("lora_id") is not None or any(extra):
            return
        self.block_size = size
        parent_hash = ev.get("parent_block_hash")
        if parent_hash is None:
            parent = ROOT_KEY
        elif parent_hash in self._key_of:
            parent = self._key_of[parent_hash]
        else:
            self.gaps += 1
            return
        for h, key in zip(hashes, block_keys(tokens, size, parent), strict=False):
            if h not in self._key_of:
                self._key_of[h] = key
                self._log.append((True, key))
        self._trim()

    def _drop(self, engine_hash: Any) -> None:
        key = self._key_of.pop(engine_hash, None)
        if key is not None:
            self._log.append((False, key))
            self._trim()

    def _trim(self) -> None:
        extra = len(self._log) - self._log_limit
        if extra > 0:
            del self._log[:extra]
            self._log_start += extra

    def delta(self, epoch: str | None, since: int) -> BlockDelta:
        """Changes after cursor (`epoch`, `since`); the whole set when the cursor is of
        another stream or older than the log."""
        if epoch != self.epoch or since < self._log_start or since > self.seq:
            return BlockDelta(
                epoch=self.epoch, seq=self.seq, reset=True, added=sorted(self.keys()),
                removed=[], block_size=self.block_size, gaps=self.gaps,
            )  # fmt: skip
        last: dict[int, bool] = {}  # a key's last change in the window is what counts
        for is_add, key in self._log[since - self._log_start :]:
            last[key] = is_add
        added = [k for k, a in last.items() if a]
        removed = [k for k, a in last.items() if not a]
        return BlockDelta(
            epoch=self.epoch, seq=self.seq, reset=False, added=added, removed=removed,
            block_size=self.block_size, gaps=self.gaps,
        )  # fmt: skip
