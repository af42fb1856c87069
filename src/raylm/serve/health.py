"""Busy or hung: how a replica's health is judged without being fooled either way.

A one-token generation proves an engine works, but on a busy engine it queues behind user
work, times out, and a healthy replica gets killed (one request with `n=1000` did that).
So the generation probe runs only when the engine is idle. When it is not, the engine's
own counters decide: a replica with requests in it whose prompt and generation token
counters (and engine steps) keep moving is busy, and is left alone however slow a probe
would be; one whose counters stand still for `progress_timeout_s` with requests in it is
hung. vLLM's `/health` answers from its API server, so it catches a dead engine process or
a stopped server (SIGSTOP), not a stuck engine loop: the counters catch that.

The rule, each probe interval (jittered), on rank 0:
1. `/health` must answer 200 within `probe_timeout_s`, else a strike;
2. `/metrics` is read: running + waiting requests, and the progress counters;
3. requests in the engine: progress since the last change -> healthy (busy); no progress
   for `progress_timeout_s` -> a strike (hung);
4. no request in the engine: a one-token generation within `probe_timeout_s`, else a strike,
   unless requests arrived meanwhile and the counters moved (the probe queued behind them).
`probe_strikes` strikes in a row and the replica is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from raylm.prom import VLLM_RUNNING, VLLM_WAITING, sum_samples

# Counters that move while an engine makes progress (summed over their label sets).
_PROGRESS = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:iteration_tokens_total_count",
)


class EngineLoad(BaseModel):
    """What one scrape of a replica's /metrics says about its engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    running: int = Field(description="Requests being computed now.")
    waiting: int = Field(description="Requests queued in the engine.")
    progress: float = Field(description="Sum of the progress counters (only changes matter).")

    @property
    def in_engine(self) -> int:
        return self.running + self.waiting


def parse_engine_load(text: str) -> EngineLoad | None:
    """The load from vLLM's Prometheus text, or None when it lacks the gauges."""
    sums = sum_samples(text, (*_PROGRESS, VLLM_RUNNING, VLLM_WAITING))
    if VLLM_RUNNING not in sums or VLLM_WAITING not in sums:
        return None
    return EngineLoad(
        running=int(sums[VLLM_RUNNING]),
        waiting=int(sums[VLLM_WAITING]),
        progress=sum(sums.get(k, 0.0) for k in _PROGRESS),
    )


class Judgement(StrEnum):
    """What one look at the engine's counters concludes."""

    IDLE = "idle"
    """No request in the engine: prove it works with a generation."""
    BUSY = "busy"
    """Requests in it and progress: healthy, however slow a probe would be."""
    STALLED = "stalled"
    """Requests in it and no progress for the progress timeout: hung."""


@dataclass
class ProgressWatch:
    """Remembers the last progress counter and when it last changed."""

    progress_timeout_s: float
    last: float | None = None
    changed_at: float = 0.0

    def judge(self, load: EngineLoad, now: float) -> Judgement:
        if self.last is None or load.progress != self.last:
            self.last, self.changed_at = load.progress, now
        if load.in_engine == 0:
            self.changed_at = now  # an idle engine is not stalling
            return Judgement.IDLE
        if now - self.changed_at >= self.progress_timeout_s:
            return Judgement.STALLED
        return Judgement.BUSY

    def stalled_for(self, now: float) -> float:
        return now - self.changed_at


class Probing(BaseModel):
    """How a replica's health is judged (the rule: raylm.serve.health). The spec declares
    the defaults; this carries the values to the controller and the supervisors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    startup_timeout_s: float = Field(gt=0, description="Time a replica may take to load.")
    interval_s: float = Field(gt=0, description="Seconds between health checks (jittered).")
    timeout_s: float = Field(gt=0, description="Deadline of /health and of a probe generation.")
    strikes: int = Field(ge=1, description="Failed checks in a row before a replacement.")
    progress_timeout_s: float = Field(
        gt=0, description="How long a busy engine may make no progress before it counts as hung."
    )
