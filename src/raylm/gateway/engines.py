"""What each replica's engine says about itself, read by the gateway from vLLM's /metrics:
KV-cache usage, running and waiting requests, prefix-cache hits and queries, tokens
generated. The gateway's own /metrics repeats them with replica and model labels (one
scrape page for the whole deployment), and routing may weigh them.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from raylm.prom import VLLM_RUNNING, VLLM_WAITING, sum_samples
from raylm.replica import ReplicaInfo

logger = logging.getLogger(__name__)

_KV = "vllm:kv_cache_usage_perc"
_HITS = "vllm:prefix_cache_hits_total"
_QUERIES = "vllm:prefix_cache_queries_total"
_GENERATED = "vllm:generation_tokens_total"


class EngineStats(BaseModel):
    """One scrape of one replica's engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_cache_usage: float = Field(description="Share of the KV cache in use, 0..1.")
    running: int = Field(description="Requests being computed.")
    waiting: int = Field(description="Requests queued in the engine.")
    prefix_cache_hits: float = Field(description="Prompt tokens served from the prefix cache.")
    prefix_cache_queries: float = Field(description="Prompt tokens looked up in the cache.")
    generation_tokens: float = Field(
        default=0.0,
        description="Tokens the engine generated since it started (every answer, streamed "
        "or not, with or without usage).",
    )
    scraped_at: float = Field(description="Monotonic time of the scrape.")


def parse_engine_stats(text: str, now: float) -> EngineStats | None:
    """The stats from vLLM's Prometheus text, or None when it lacks the request gauges."""
    s = sum_samples(text, (_KV, VLLM_RUNNING, VLLM_WAITING, _HITS, _QUERIES, _GENERATED))
    if VLLM_RUNNING not in s or VLLM_WAITING not in s:
        return None
    return EngineStats(
        kv_cache_usage=s.get(_KV, 0.0),
        running=int(s[VLLM_RUNNING]),
        waiting=int(s[VLLM_WAITING]),
        prefix_cache_hits=s.get(_HITS, 0.0),
        prefix_cache_queries=s.get(_QUERIES, 0.0),
        generation_tokens=s.get(_GENERATED, 0.0),
        scraped_at=now,
    )


class EngineView:
    """The latest stats of every ready replica, scraped every `interval_s`."""

    def __init__(self, interval_s: float, headers: dict[str, str]) -> None:
        self.interval_s = interval_s
        self._headers = headers
        self._stats: dict[str, EngineStats] = {}

    def get(self, replica_id: str) -> EngineStats | None:
        return self._stats.get(replica_id)

    async def scrape(self, session: aiohttp.ClientSession, replicas: list[ReplicaInfo]) -> None:
        """Scrape each replica once, concurrently; a replica that does not answer keeps no
        stats (stale numbers would mislead), and replicas gone are dropped."""
        got = await asyncio.gather(*(self._one(session, r) for r in replicas))
        self._stats = {r.replica_id: st for r, st in zip(replicas, got, strict=True) if st}

    async def _one(self, session: aiohttp.ClientSession, r: ReplicaInfo) -> EngineStats | None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.interval_s))
        try:
            async with session.get(
                f"{r.url}/metrics", headers=self._headers, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.debug("engine metrics of %s unreadable: %s", r.replica_id, e)
            return None
        return parse_engine_stats(text, time.monotonic())
