"""A-B-B-A comparisons of two endpoints: the run order and the B/A ratios with their
spread. Pure: it only reads the vllm-bench results it is given."""

from __future__ import annotations

import statistics
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# vllm-bench result fields compared, and whether a higher value is better.
METRICS: dict[str, bool] = {
    "request_throughput": True,
    "output_throughput": True,
    "median_ttft_ms": False,
    "p99_ttft_ms": False,
    "median_tpot_ms": False,
    "p99_tpot_ms": False,
    "median_e2el_ms": False,
    "p99_e2el_ms": False,
}


class Ratio(BaseModel):
    """One metric's B/A ratio over the rounds."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="The vllm-bench result field.")
    median: float = Field(description="The median of the rounds' B/A ratios.")
    low: float = Field(description="The lowest round's ratio.")
    high: float = Field(description="The highest round's ratio.")
    rounds: int = Field(ge=1, description="Rounds the ratio is taken over (one A, one B each).")
    higher_is_better: bool = Field(description="Whether a ratio above 1 means B is better.")


def schedule(rounds: int) -> list[str]:
    """The run order: A B, then B A, and so on, so neither endpoint always goes first (a
    machine that warms up or slows down over time favours neither)."""
    order: list[str] = []
    for i in range(rounds):
        order += ["A", "B"] if i % 2 == 0 else ["B", "A"]
    return order


def ratios(a_runs: list[dict[str, Any]], b_runs: list[dict[str, Any]]) -> list[Ratio]:
    """Per metric, the B/A ratio of each round (the i-th run of each), summarised."""
    out = []
    for metric, higher in METRICS.items():
        per_round = [
            b[metric] / a[metric]
            for a, b in zip(a_runs, b_runs, strict=True)
            if isinstance(a.get(metric), int | float)
            and isinstance(b.get(metric), int | float)
            and a[metric] > 0
        ]
        if per_round:
            out.append(
                Ratio(
                    metric=metric,
                    median=statistics.median(per_round),
                    low=min(per_round),
                    high=max(per_round),
                    rounds=len(per_round),
                    higher_is_better=higher,
                )
            )
    return out
