"""Reading a Prometheus text page (vLLM's /metrics): each wanted metric's samples summed
over their label sets. Shared by the health rule and the gateway's engine view."""

from __future__ import annotations

from collections.abc import Iterable

# vLLM's own metric names that raylm reads.
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"


def sum_samples(text: str, names: Iterable[str]) -> dict[str, float]:
    """{name: sum of its samples} for the wanted names present in `text`."""
    wanted = set(names)
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition("{") if "{" in line else line.partition(" ")
        if name not in wanted:
            continue
        value = rest.rsplit(" ", 1)[-1] if "{" in line else rest
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums
