"""The objectives: how a feasible layout is scored, re-scored when pools merge or the
replica count is pinned, and ordered best first.

- throughput: estimated aggregate decode tokens/s (a memory-bandwidth roofline), which
  favours many small replicas whenever the model fits in fewer GPUs;
- latency: fewest pipeline stages, then the fastest single stream;
- context: the longest `max_model_len` that fits, then throughput.
"""

from __future__ import annotations

from raylm.planner.layout import Layout

OBJECTIVES: tuple[str, ...] = ("throughput", "latency", "context")


def score(objective: str, *, tokens_per_s: float, ms_per_token: float, max_len: int) -> float:
    """Higher is better: aggregate tokens/s, single-stream tokens/s, or context length."""
    if objective == "throughput":
        return tokens_per_s
    if objective == "latency":
        return 1e3 / ms_per_token
    return float(max_len)


def rank(objective: str, layouts: list[Layout], window: float) -> list[Layout]:
    """Best first. Throughput: the estimate decides, but among layouts within `window` of the
    best estimate more replicas win (the estimate is rough; replicas are robust)."""
    if objective == "latency":
        return sorted(
            layouts,
            key=lambda x: (x.pipeline_parallel_size, x.est_ms_per_token, x.gpus_per_replica),
        )
    if objective == "context":
        return sorted(
            layouts, key=lambda x: (-x.max_model_len, -x.est_tokens_per_s, x.gpus_per_replica)
        )
    # A shortened context is a compromise: such layouts follow every full-context one, and
    # the tie window is measured from the best full-context estimate when there is one.
    full = [x.score for x in layouts if not x.max_model_len_lowered] or [x.score for x in layouts]
    best = max(full)

    def key(x: Layout) -> tuple[float, ...]:
        near = x.score >= best * (1 - window)
        return (
            x.max_model_len_lowered,
            not near,
            -x.replicas if near else 0,
            -x.score,
            x.gpus_per_replica,
        )

    return sorted(layouts, key=key)


def merge_groups(ok: list[Layout], objective: str) -> Layout:
    """One layout over several node groups: replicas add up, figures are the worst group's."""
    if len(ok) == 1:
        return ok[0]
    worst = min(ok, key=lambda lay: lay.kv_cache_tokens_per_replica)
    total = sum(lay.replicas for lay in ok)
    tps = sum(lay.est_tokens_per_s for lay in ok)
    return worst.model_copy(
        update={
            "replicas": total,
            "est_tokens_per_s": tps,
            "max_model_len": min(lay.max_model_len for lay in ok),
            "score": tps if objective == "throughput" else worst.score,
            "nodes": [n for lay in ok for n in lay.nodes],
            "warnings": [
                *dict.fromkeys(w for lay in ok for w in lay.warnings),
                "replicas on different GPU types; figures shown are the smallest replica's",
            ],
            # The merged warnings carry every group's; so does this flag.
            "max_model_len_lowered": any(lay.max_model_len_lowered for lay in ok),
        }
    )


def with_replicas(lay: Layout, n: int, objective: str) -> Layout:
    """`lay` cut down to `n` replicas, its throughput and score scaled to match."""
    tps = lay.est_tokens_per_s * n / lay.replicas
    new_score = tps if objective == "throughput" else lay.score
    return lay.model_copy(
        update={"replicas": n, "est_tokens_per_s": round(tps, 1), "score": new_score}
    )
