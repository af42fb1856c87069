"""Evaluation of one candidate: a (TP, PP) shape on one node group becomes a `Layout` with
its memory budget, KV cache, context length and score, or a `Rejection` with its cause.

A candidate is rejected when it cannot be placed (see `shapes.place`), when its quantization
cannot run on the GPUs, when other processes hold the memory a pinned
`gpu_memory_utilization` needs (cause "busy"), or when the weights, the reserve and one
`max_model_len` sequence of KV cache do not fit a device (cause "memory").
"""

from __future__ import annotations

from raylm.models.facts import ModelFacts
from raylm.planner.cluster import NodeSpec
from raylm.planner.layout import Layout, Rejection
from raylm.planner.memory import (
    PlannerConstants,
    decode_speed,
    kv_bytes_per_token,
    reserve_bytes,
    weight_bytes_per_device,
)
from raylm.planner.rank import score
from raylm.planner.shapes import NodeGroup, place
from raylm.units import gib_text


def _serve_dtype(facts: ModelFacts, node: NodeSpec) -> tuple[str, list[str]]:
    if node.accelerator == "cpu":
        # bf16 gave wrong text on AVX2-only CPUs; float32 is the safe CPU choice.
        return "float32", []
    want = facts.torch_dtype if facts.torch_dtype in ("bfloat16", "float16") else "bfloat16"
    if want == "bfloat16" and not node.bf16:
        return "float16", [
            f"{node.gpu_name} (compute capability {node.compute_capability}) has no bfloat16: "
            "serving in float16 (--dtype float16), which can overflow on some models"
        ]
    return want, []


def _quant_arg(facts: ModelFacts, node: NodeSpec) -> tuple[str | None, str | None]:
    """(vLLM --quantization value, reason it cannot work on this node or None)."""
    q = facts.quantization
    if q is None:
        return None, None
    cc = float(node.compute_capability) if node.compute_capability else 8.0
    gpu = node.accelerator == "gpu"
    if q.method in ("gptq", "awq"):
        return (f"{q.method}_marlin" if gpu and cc >= 8.0 else q.method), None
    if q.method == "fp8" and gpu and cc < 8.0:
        return "fp8", f"FP8 weights need compute capability 8.0 or newer; {node.gpu_name} has {cc}"
    return q.method, None


def evaluate(
    facts: ModelFacts,
    group: NodeGroup,
    tp: int,
    pp: int,
    *,
    max_model_len: int | None,
    objective: str,
    util: float,
    util_pinned: bool,
    allow_cross: bool,
    c: PlannerConstants,
    eager: bool,
) -> Layout | Rejection:
    """The layout of (TP, PP) on `group`, or why it cannot work there."""
    placed = place(group, tp, pp, allow_cross=allow_cross)
    if isinstance(placed, Rejection):
        return placed
    node = group.node
    world = tp * pp
    n_nodes, per_node, count = placed.nodes_per_replica, placed.gpus_per_node, placed.replicas
    warnings = list(placed.warnings)
    quant, qwhy = _quant_arg(facts, node)
    if qwhy:
        return Rejection(tensor_parallel_size=tp, pipeline_parallel_size=pp, reason=qwhy)
    dtype, dw = _serve_dtype(facts, node)
    warnings += dw
    weights = weight_bytes_per_device(facts, dtype, tp, pp)
    reserve = reserve_bytes(facts, dtype, tp, node.accelerator, c, eager=eager)
    budget = int(node.gpu_memory_bytes * util)
    free = min(
        (n.gpu_memory_free_bytes for n in group.nodes if n.gpu_memory_free_bytes is not None),
        default=None,
    )
    if free is not None and free < budget:
        # vLLM starts only when its whole share is free: plan with what is free, or say so.
        held = f"other processes hold {gib_text(node.gpu_memory_bytes - free)}"
        low_util = int((free - c.free_memory_margin_bytes) * 100 / node.gpu_memory_bytes) / 100
        if util_pinned or low_util <= 0:
            return Rejection(
                tensor_parallel_size=tp,
                pipeline_parallel_size=pp,
                reason=f"TP={tp}, PP={pp}: a GPU has only {gib_text(free)} free ({held}); "
                f"--gpu-memory-utilization {util:g} needs {gib_text(budget)} free to start",
                cause="busy",
                needed_bytes_per_gpu=budget,
                available_bytes_per_gpu=free,
            )
        warnings.append(
            f"a GPU has only {gib_text(free)} free ({held}): planned with "
            f"--gpu-memory-utilization {low_util:g} instead of {util:g}"
        )
        util, budget = low_util, int(node.gpu_memory_bytes * low_util)
    kv_tok = kv_bytes_per_token(facts, dtype, tp, pp)
    kv_bytes = budget - weights - reserve
    blocks = max(0, kv_bytes) // (kv_tok * c.kv_block_size)
    kv_tokens = blocks * c.kv_block_size
    model_max = facts.max_position_embeddings
    target = max_model_len or model_max
    label = f"TP={tp}, PP={pp}"
    len_lowered = False
    if kv_tokens < target:
        floor = min(model_max, c.min_auto_context)
        low_len = kv_tokens // 256 * 256
        if max_model_len is None and objective != "context" and low_len >= floor:
            warnings.append(
                f"max_model_len lowered to {low_len} (the model supports {model_max}) so that "
                "one full sequence fits the KV cache"
            )
            target, len_lowered = low_len, True
        elif not (objective == "context" and max_model_len is None and low_len >= floor):
            need_len = target if max_model_len else floor
            needed = weights + reserve + need_len * kv_tok
            if kv_bytes <= 0:
                what = (
                    f"{gib_text(weights)} of weights + {gib_text(reserve)} reserve per GPU "
                    f"exceed the {gib_text(budget)} usable ({gib_text(node.gpu_memory_bytes)} "
                    f"x {util:g})"
                )
            else:
                what = (
                    f"the KV cache holds {kv_tokens} tokens, fewer than one "
                    f"{need_len}-token sequence (needs {gib_text(needed)} per GPU, "
                    f"{gib_text(budget)} usable)"
                )
            return Rejection(
                tensor_parallel_size=tp,
                pipeline_parallel_size=pp,
                reason=f"{label}: {what}",
                cause="memory",
                needed_bytes_per_gpu=needed,
                available_bytes_per_gpu=budget,
            )
    if objective == "context" and max_model_len is None:
        target = min(model_max, kv_tokens)
    if n_nodes > 1 and not placed.tp_cross_node and not node.infiniband:
        warnings.append(
            f"PP={pp} crosses {n_nodes} nodes over Ethernet: hand-offs are small, but set "
            "NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME to the right interface"
        )
    if node.accelerator == "cpu":
        warnings.append("CPU backend: float32 and --enforce-eager; expect low speed")
    tps, ms = decode_speed(
        facts,
        node,
        c,
        tp=tp,
        pp=pp,
        tp_cross=placed.tp_cross_node,
        pp_cross=n_nodes > 1,
        weights=weights,
        kv_tok=kv_tok,
        kv_tokens=kv_tokens,
        max_len=target,
        dtype=dtype,
    )
    value = score(objective, tokens_per_s=tps * count, ms_per_token=ms, max_len=target)
    return Layout(
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        replicas=count,
        gpus_per_replica=world,
        nodes_per_replica=n_nodes,
        gpus_per_node=per_node,
        max_model_len=target,
        gpu_memory_utilization=util,
        dtype=dtype,
        quantization=quant,
        accelerator=node.accelerator,
        gpu_name=node.gpu_name,
        device_memory_bytes=node.gpu_memory_bytes,
        weight_bytes_per_gpu=weights,
        reserve_bytes_per_gpu=reserve,
        kv_cache_bytes_per_gpu=kv_bytes,
        kv_bytes_per_token=kv_tok,
        kv_cache_tokens_per_replica=kv_tokens,
        max_concurrent_seqs=kv_tokens // target,
        est_tokens_per_s=round(tps * count, 1),
        est_ms_per_token=round(ms, 3),
        score=round(value, 3),
        nodes=placed.nodes,
        warnings=warnings,
        max_model_len_lowered=len_lowered,
    )
