"""The planner's entry point: choose tensor-parallel, pipeline-parallel and replica counts,
and say why.

Every (TP, PP) pair up to the cluster's size is tried (`shapes`). A pair is rejected with a
reason when the model cannot be split that way (`check_layout`), when it cannot be placed
(TP across nodes, uneven nodes), or when the weights, the reserve and one `max_model_len`
sequence of KV cache do not fit a device (`evaluate`). Feasible layouts are ordered under the
objective (`rank`). When nothing fits, the PlanError says what is needed and what would help.
"""

from __future__ import annotations

import math

from raylm.errors import PlanError
from raylm.models.facts import ModelFacts
from raylm.planner.cluster import ClusterSpec
from raylm.planner.evaluate import evaluate
from raylm.planner.layout import Layout, PlanResult, Rejection
from raylm.planner.memory import PlannerConstants, serve_weight_bytes
from raylm.planner.rank import OBJECTIVES, merge_groups, rank, with_replicas
from raylm.planner.shapes import check_layout, node_groups, shapes
from raylm.units import gib_text

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's own default share of a GPU's memory."""


def plan(
    facts: ModelFacts,
    cluster: ClusterSpec,
    *,
    objective: str = "throughput",
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    tensor_parallel_size: int | None = None,
    pipeline_parallel_size: int | None = None,
    replicas: int | None = None,
    allow_cross_node_tp: bool = False,
    enforce_eager: bool = False,
    constants: PlannerConstants | None = None,
) -> PlanResult:
    """Every feasible layout of `facts` on `cluster`, ranked by `objective`.

    `gpu_memory_utilization` None means vLLM's default (0.9), lowered on a live cluster to
    what other processes leave free; a given value is kept, and a layout it cannot start
    with is rejected. Raises PlanError (with needed/available bytes and a remedy) when
    nothing fits or when the given tensor_parallel_size / pipeline_parallel_size /
    replicas cannot work.
    """
    c = constants or PlannerConstants()
    util_pinned = gpu_memory_utilization is not None
    gpu_memory_utilization = (
        DEFAULT_GPU_MEMORY_UTILIZATION if gpu_memory_utilization is None else gpu_memory_utilization
    )
    if objective not in OBJECTIVES:
        raise PlanError(
            f"Unknown objective {objective!r}", fix=f"use one of {', '.join(OBJECTIVES)}"
        )
    if not 0 < gpu_memory_utilization <= 1:
        raise PlanError(
            f"gpu_memory_utilization {gpu_memory_utilization} is out of range",
            fix="use a fraction in (0, 1], e.g. 0.9",
        )
    if max_model_len is not None and max_model_len < 1:
        raise PlanError(f"max_model_len {max_model_len} must be positive")
    if max_model_len is not None and max_model_len > facts.max_position_embeddings:
        raise PlanError(
            f"max_model_len {max_model_len} exceeds {facts.name}'s context of "
            f"{facts.max_position_embeddings} tokens",
            fix=f"use --max-model-len {facts.max_position_embeddings} or less",
        )
    for flag, v in (
        ("tensor_parallel_size", tensor_parallel_size),
        ("pipeline_parallel_size", pipeline_parallel_size),
        ("replicas", replicas),
    ):
        if v is not None and v < 1:
            raise PlanError(f"{flag} must be at least 1, got {v}")
    groups = node_groups(cluster)
    if not groups:
        raise PlanError(
            f"The cluster ({cluster.description or 'given'}) has no GPUs to plan for",
            fix="describe GPU nodes, e.g. --cluster 2x4xL20",
        )
    feasible: list[Layout] = []
    rejected: list[Rejection] = []
    for tp, pp in shapes(cluster, facts, allow_cross_node_tp):
        if tensor_parallel_size and tp != tensor_parallel_size:
            continue
        if pipeline_parallel_size and pp != pipeline_parallel_size:
            continue
        reasons = check_layout(facts, tp, pp)
        if reasons:
            prefix = f"TP={tp}: "
            text = "; ".join(r if i == 0 else r.removeprefix(prefix) for i, r in enumerate(reasons))
            rejected.append(
                Rejection(tensor_parallel_size=tp, pipeline_parallel_size=pp, reason=text)
            )
            continue
        results = [
            evaluate(
                facts,
                group,
                tp,
                pp,
                max_model_len=max_model_len,
                objective=objective,
                util=gpu_memory_utilization,
                util_pinned=util_pinned,
                allow_cross=allow_cross_node_tp,
                c=c,
                eager=enforce_eager,
            )
            for group in groups
        ]
        ok = [r for r in results if isinstance(r, Layout)]
        if not ok:
            rej = [r for r in results if isinstance(r, Rejection)]
            rejected.append(max(rej, key=lambda r: r.needed_bytes_per_gpu is not None))
            continue
        feasible.append(merge_groups(ok, objective))
    if (tensor_parallel_size or pipeline_parallel_size) and not feasible and not rejected:
        tp_s, pp_s = tensor_parallel_size or "any", pipeline_parallel_size or "any"
        raise PlanError(
            f"TP={tp_s}, PP={pp_s} does not fit {cluster.summary()}",
            why=f"the cluster has {cluster.total_gpus} GPUs, at most "
            f"{max(n.gpu_count for n in cluster.nodes)} per node",
            fix="choose sizes the cluster can hold, or leave them out to let raylm plan",
        )
    if replicas is not None:
        too_few = [lay for lay in feasible if lay.replicas < replicas]
        for lay in too_few:
            rejected.append(
                Rejection(
                    tensor_parallel_size=lay.tensor_parallel_size,
                    pipeline_parallel_size=lay.pipeline_parallel_size,
                    reason=f"TP={lay.tensor_parallel_size}, PP={lay.pipeline_parallel_size}: "
                    f"only {lay.replicas} replica(s) fit, {replicas} requested",
                )
            )
        feasible = [
            with_replicas(lay, replicas, objective) for lay in feasible if lay.replicas >= replicas
        ]
    if not feasible:
        if tensor_parallel_size or pipeline_parallel_size or replicas:
            why = "; ".join(dict.fromkeys(r.reason for r in rejected))
            mem = [r for r in rejected if r.needed_bytes_per_gpu is not None]
            raise PlanError(
                "The requested layout cannot work: " + why,
                needed_bytes_per_gpu=mem[0].needed_bytes_per_gpu if mem else None,
                available_bytes_per_gpu=mem[0].available_bytes_per_gpu if mem else None,
                fix="Leave out --tp/--pp/--replicas to let raylm choose, or change them",
            )
        raise _nothing_fits(facts, cluster, rejected, gpu_memory_utilization, max_model_len)
    feasible = rank(objective, feasible, c.throughput_tie_window)
    rejected = _dedupe(rejected)
    return PlanResult(
        plan=feasible[0], alternatives=feasible[1:], rejected=rejected, objective=objective
    )


def _dedupe(rejected: list[Rejection]) -> list[Rejection]:
    """One rejection per distinct reason text (TP-only reasons repeat for every PP)."""
    seen: set[str] = set()
    out = []
    for r in rejected:
        if r.reason not in seen:
            seen.add(r.reason)
            out.append(r)
    return out


def _nothing_fits(
    facts: ModelFacts,
    cluster: ClusterSpec,
    rejected: list[Rejection],
    util: float,
    max_model_len: int | None,
) -> PlanError:
    mem = [r for r in rejected if r.cause == "memory"]
    busy = [r for r in rejected if r.cause == "busy"]
    if busy and not mem:
        r = busy[0]
        free = int(r.available_bytes_per_gpu or 0)
        return PlanError(
            f"{facts.name} cannot start on {cluster.summary()} now: other processes hold the "
            "GPU memory it needs",
            needed_bytes_per_gpu=r.needed_bytes_per_gpu,
            available_bytes_per_gpu=free,
            why=r.reason,
            fix="Free that memory (doctor names the processes), or leave "
            "--gpu-memory-utilization out so raylm plans with what is free",
            command="raylm doctor",
        )
    if not mem:
        reasons = "; ".join(dict.fromkeys(r.reason for r in rejected)) or "no GPUs"
        return PlanError(
            f"No parallel layout of {facts.name} works on {cluster.summary()}",
            why=reasons,
            fix="use a cluster whose GPU counts per node divide the model's attention heads",
        )
    best = max(mem, key=lambda r: r.tensor_parallel_size * r.pipeline_parallel_size)
    gpus = best.tensor_parallel_size * best.pipeline_parallel_size
    per_need = int(best.needed_bytes_per_gpu or 0)
    per_avail = int(best.available_bytes_per_gpu or 0)
    needed, available = per_need * gpus, per_avail * gpus
    weights = sum(serve_weight_bytes(facts, facts.torch_dtype))
    more = math.ceil(needed / max(per_avail, 1))
    quant = (
        f"a 4-bit quantized variant (~{gib_text(weights / 3.5)} of weights instead of "
        f"{gib_text(weights)})"
        if facts.quantization is None
        else "a smaller model"
    )
    remedies = [f"use {quant}", f"at least {more} GPUs like these"]
    node_mem = per_avail / util
    if util < 0.95 and per_need <= node_mem * 0.95:
        remedies.append(f"a higher --gpu-memory-utilization (now {util:g})")
    if max_model_len:
        remedies.append("a shorter --max-model-len")
    return PlanError(
        f"{facts.name} does not fit {cluster.summary()}: it needs about {gib_text(needed)} "
        f"but {gib_text(available)} is usable",
        needed_bytes_per_gpu=per_need,
        available_bytes_per_gpu=per_avail,
        why=best.reason,
        fix=_sentence(", or ".join(remedies)),
    )


def _sentence(text: str) -> str:
    """`text` with its first letter upper-cased (the rest as it is)."""
    return text[:1].upper() + text[1:]
