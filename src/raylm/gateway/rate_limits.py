"""Per-key rate limits: requests and tokens a minute, refused with 429 and Retry-After.

Each limited key has a bucket per rate that holds up to one minute's worth and refills
continuously. A request takes one request from its key's bucket; the tokens a replica
reports in `usage` are taken from the token bucket after the answer (they are not known
before), which may go below zero: the key's next requests are then refused until it
refills. A refusal costs the key nothing. The buckets are this process's: with several
gateway workers each would keep its own, so `raylm serve` runs one when a key is limited.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from raylm.gateway.keys import ClientKey


@dataclass
class _Bucket:
    per_minute: int
    level: float
    at: float

    def refill(self, now: float) -> float:
        self.level = min(
            float(self.per_minute), self.level + (now - self.at) * self.per_minute / 60.0
        )
        self.at = now
        return self.level

    def seconds_until(self, level: float) -> int:
        """Whole seconds until the bucket holds `level` (at least 1)."""
        return max(1, math.ceil((level - self.level) * 60.0 / self.per_minute))


@dataclass(frozen=True)
class RateRefusal:
    """Why a key's request was refused: which limit, and when to come back."""

    limit: str
    """"requests" or "tokens", as OpenAI's 429 `type` says it."""
    per_minute: int
    retry_after_s: int

    def message(self, key: str) -> str:
        what = "requests" if self.limit == "requests" else "tokens"
        return (
            f"Rate limit reached for key `{key}` on {what} per minute: limit "
            f"{self.per_minute}. Please try again in {self.retry_after_s} s."
        )


class RateLimits:
    """The buckets of every limited key."""

    def __init__(self, keys: list[ClientKey], clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        now = self._now()
        self._requests = {
            k.name: _Bucket(k.requests_per_minute, float(k.requests_per_minute), now)
            for k in keys
            if k.requests_per_minute is not None
        }
        self._tokens = {
            k.name: _Bucket(k.tokens_per_minute, float(k.tokens_per_minute), now)
            for k in keys
            if k.tokens_per_minute is not None
        }

    def __bool__(self) -> bool:
        return bool(self._requests or self._tokens)

    def admit(self, key: str) -> RateRefusal | None:
        """Take one request for `key`, or say why not (taking nothing)."""
        now = self._now()
        tokens = self._tokens.get(key)
        if tokens is not None and tokens.refill(now) <= 0:
            return RateRefusal("tokens", tokens.per_minute, tokens.seconds_until(1.0))
        requests = self._requests.get(key)
        if requests is not None:
            if requests.refill(now) < 1.0:
                return RateRefusal("requests", requests.per_minute, requests.seconds_until(1.0))
            requests.level -= 1.0
        return None

    def charge(self, key: str, tokens: int) -> None:
        """Take the `tokens` an answer used from `key`'s token bucket."""
        bucket = self._tokens.get(key)
        if bucket is not None and tokens > 0:
            bucket.refill(self._now())
            bucket.level -= tokens
