"""Choose tensor-parallel, pipeline-parallel and replica counts, and say why.

Every (TP, PP) pair up to the cluster's size is tried. A pair is rejected with a reason when
the model cannot be split that way (`check_layout`), when it cannot be placed (TP across
nodes, uneven nodes), or when the weights, the reserve and one `max_model_len` sequence of KV
cache do not fit a device. Feasible layouts get a score under the objective:

- throughput: estimated aggregate decode tokens/s (a memory-bandwidth roofline), which
  favours many small replicas whenever the model fits in fewer GPUs;
- latency: fewest pipeline stages, then the fastest single stream;
- context: the longest `max_model_len` that fits, then throughput.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import PlanError
from raylm.models.facts import DTYPE_BYTES, ModelFacts
from raylm.planner.cluster import GIB, ClusterSpec, NodeSpec
from raylm.planner.memory import (
    PlannerConstants,
    kv_bytes_per_token,
    layers_per_stage,
    reserve_bytes,
    serve_weight_bytes,
    weight_bytes_per_device,
)

log = logging.getLogger(__name__)

Objective = Literal["throughput", "latency", "context"]
OBJECTIVES: tuple[str, ...] = ("throughput", "latency", "context")
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's own default share of a GPU's memory."""


class Layout(BaseModel):
    """One way to serve the model on the cluster, with its memory budget and score."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(description="GPUs sharing each layer (inside a node).")
    pipeline_parallel_size: int = Field(description="Pipeline stages (layers split in order).")
    replicas: int = Field(description="Independent copies of the model (data parallel).")
    gpus_per_replica: int = Field(description="TP x PP.")
    nodes_per_replica: int = Field(description="Nodes one replica spans.")
    gpus_per_node: int = Field(description="GPUs a replica uses on each of its nodes.")
    max_model_len: int = Field(description="Context length (prompt + output) per sequence.")
    gpu_memory_utilization: float = Field(description="Share of device memory vLLM may use.")
    dtype: str = Field(description="vLLM --dtype: bfloat16, float16 or float32.")
    quantization: str | None = Field(description="vLLM --quantization value, None when not needed.")
    accelerator: Literal["gpu", "cpu"] = Field(description="Device kind the layout runs on.")
    gpu_name: str = Field(description="GPU model of the nodes used.")
    device_memory_bytes: int = Field(description="Memory of one device.")
    weight_bytes_per_gpu: int = Field(description="Weights on the fullest device.")
    reserve_bytes_per_gpu: int = Field(description="Activation/workspace/CUDA-graph reserve.")
    kv_cache_bytes_per_gpu: int = Field(description="What is left for the KV cache per device.")
    kv_bytes_per_token: int = Field(description="KV bytes one token takes on one device.")
    kv_cache_tokens_per_replica: int = Field(description="Tokens the KV cache of a replica holds.")
    max_concurrent_seqs: int = Field(description="Sequences of max_model_len that fit at once.")
    est_tokens_per_s: float = Field(description="Estimated aggregate decode tokens/s (rough).")
    est_ms_per_token: float = Field(description="Estimated single-stream time per token (rough).")
    score: float = Field(description="Higher is better under the objective.")
    nodes: list[str] = Field(description="Nodes the replicas would use.")
    warnings: list[str] = Field(default_factory=list, description="Things the user should know.")


class Rejection(BaseModel):
    """A layout that cannot work, and why."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(description="TP of the rejected layout.")
    pipeline_parallel_size: int = Field(description="PP of the rejected layout.")
    reason: str = Field(description="Why it cannot work, in one sentence.")
    cause: Literal["layout", "memory", "busy"] = Field(
        default="layout",
        description="layout: the shape cannot work; memory: it does not fit the GPUs; busy: it "
        "would fit, but other processes hold the memory it needs now.",
    )
    needed_bytes_per_gpu: int | None = Field(
        default=None, description="Memory one device would need, for memory rejections."
    )
    available_bytes_per_gpu: int | None = Field(
        default=None, description="Memory one device offers (x utilization)."
    )


class PlanResult(BaseModel):
    """The chosen layout, the other feasible ones (best first) and the rejected ones."""

    model_config = ConfigDict(extra="forbid")

    plan: Layout | None = Field(description="The best layout under the objective.")
    alternatives: list[Layout] = Field(description="Other feasible layouts, best first.")
    rejected: list[Rejection] = Field(description="Layouts that cannot work, with reasons.")
    objective: str = Field(description="The objective the layouts were ranked by.")


def check_layout(
    facts: ModelFacts, tensor_parallel_size: int, pipeline_parallel_size: int
) -> list[str]:
    """Reasons a (TP, PP) split cannot work for this model on any hardware; [] when fine."""
    tp, pp = tensor_parallel_size, pipeline_parallel_size
    out: list[str] = []
    if tp < 1 or pp < 1:
        return [f"TP={tp}, PP={pp}: both must be at least 1"]
    if facts.num_attention_heads % tp:
        out.append(
            f"TP={tp}: {facts.num_attention_heads} attention heads are not divisible by {tp}"
        )
    kv = facts.num_kv_heads
    if not facts.kv_lora_rank and kv % tp and tp % kv:
        out.append(f"TP={tp}: {kv} KV heads are neither divisible by {tp} nor a divisor of it")
    if pp > facts.num_layers:
        out.append(f"PP={pp}: more pipeline stages than the model's {facts.num_layers} layers")
    return out


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


def _gib(b: float) -> str:
    return f"{b / GIB:.1f} GiB"


class _Pool:
    """Nodes alike enough to share a replica."""

    def __init__(self, nodes: list[NodeSpec]) -> None:
        self.nodes = nodes
        self.node = nodes[0]


def _pools(cluster: ClusterSpec) -> list[_Pool]:
    groups: dict[tuple[str, str, int, str | None], list[NodeSpec]] = {}
    for n in cluster.nodes:
        if n.gpu_count > 0:
            groups.setdefault(n.kind_key(), []).append(n)
    return [_Pool(g) for g in groups.values()]


def _place(pool: _Pool, per_node: int, n_nodes: int) -> tuple[int, list[str]]:
    """How many replicas fit when each takes `per_node` GPUs on `n_nodes` distinct nodes."""
    slots = {n.name or f"node{i}": n.gpu_count // per_node for i, n in enumerate(pool.nodes)}
    used: list[str] = []
    count = 0
    while True:
        best = sorted((k for k in slots if slots[k] > 0), key=lambda k: -slots[k])[:n_nodes]
        if len(best) < n_nodes:
            return count, used
        for k in best:
            slots[k] -= 1
            if k not in used:
                used.append(k)
        count += 1


def _link_gbps(node: NodeSpec, c: PlannerConstants, *, cross_node: bool) -> tuple[float, float]:
    if cross_node:
        bw = c.infiniband_gbps if node.infiniband else c.ethernet_gbps
        return bw, c.inter_latency_us
    return (c.nvlink_gbps if node.nvlink else c.pcie_gbps), c.intra_latency_us


def _speed(
    facts: ModelFacts,
    node: NodeSpec,
    c: PlannerConstants,
    *,
    tp: int,
    pp: int,
    tp_cross: bool,
    pp_cross: bool,
    weights: int,
    kv_tok: int,
    kv_tokens: int,
    max_len: int,
    dtype: str,
) -> tuple[float, float]:
    """(decode tokens/s of one replica, ms per token of a single stream): memory-bound
    roofline: each step reads the stage's weights and the batch's KV cache, plus TP
    all-reduces (two per layer) and PP hand-offs."""
    if node.accelerator == "cpu":
        bw = c.cpu_bandwidth_gbps * 1e9
    else:
        bw = (node.bandwidth_gbps or c.default_gpu_bandwidth_gbps) * 1e9
    act = DTYPE_BYTES.get(dtype, 2)
    ctx = min(max_len, c.typical_context_tokens)
    layers = layers_per_stage(facts, pp)
    tp_bw, tp_lat = _link_gbps(node, c, cross_node=tp_cross)
    pp_bw, pp_lat = _link_gbps(node, c, cross_node=pp_cross)

    def stage_s(b: float) -> float:
        t = (weights + b * ctx * kv_tok) / bw
        if tp > 1:
            msg = b * facts.hidden_size * act
            t += layers * 2 * (tp_lat * 1e-6 + 2 * (tp - 1) / tp * msg / (tp_bw * 1e9))
        return t

    def hand_s(b: float) -> float:
        return 0.0 if pp == 1 else pp_lat * 1e-6 + b * facts.hidden_size * act / (pp_bw * 1e9)

    batch = max(1, min(c.max_num_seqs, kv_tokens // max(ctx, 1)))
    micro = max(1.0, batch / pp)
    tps = micro / (stage_s(micro) + hand_s(micro)) * c.pp_stage_efficiency ** (pp - 1)
    latency = pp * stage_s(1) + (pp - 1) * hand_s(1)
    return tps, latency * 1e3


def _shapes(cluster: ClusterSpec, facts: ModelFacts, allow_cross: bool) -> list[tuple[int, int]]:
    max_g = max((n.gpu_count for n in cluster.nodes), default=0)
    total = cluster.total_gpus
    out = []
    for tp in range(1, max_g + 1):
        for pp in range(1, min(total // tp, facts.num_layers + 1) + 1):
            out.append((tp, pp))
    # TP wider than a node: with permission, multiples of the node size (then PP too);
    # without, the usual guesses (powers of two) once, so their rejection is explained.
    wider = range(max_g + 1, total + 1)
    if allow_cross:
        out += [(t, p) for t in wider if t % max_g == 0 for p in range(1, total // t + 1)]
    else:
        out += [(t, 1) for t in wider if t & (t - 1) == 0]
    return out


def _evaluate(
    facts: ModelFacts,
    pool: _Pool,
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
    node = pool.node
    g_max = max(n.gpu_count for n in pool.nodes)
    world = tp * pp
    warnings: list[str] = []
    # Smallest node count with the same whole number of stages on each node.
    n_nodes, per_node = 0, 0
    for n in range(1, world + 1):
        if world % n == 0 and world // n <= g_max and (pp % n == 0):
            n_nodes, per_node = n, world // n
            break
    tp_cross = False
    if not n_nodes and allow_cross and tp > g_max and tp % g_max == 0:
        n_nodes, per_node, tp_cross = world // g_max, g_max, True
        warnings.append(
            f"TP={tp} spans {tp // g_max} nodes: every layer all-reduces across the network; "
            "this needs InfiniBand/RoCE"
            + ("" if node.infiniband else " and these nodes report none")
        )
    if not n_nodes:
        if tp > g_max:
            why = (
                f"TP={tp}: tensor parallel must stay inside a node and the largest node "
                f"has {g_max} GPUs (allow cross-node TP only with InfiniBand)"
            )
        else:
            why = (
                f"TP={tp}, PP={pp}: {world} GPUs cannot be split into equal whole stages "
                f"on nodes of {g_max} GPUs"
            )
        return Rejection(tensor_parallel_size=tp, pipeline_parallel_size=pp, reason=why)
    count, used = _place(pool, per_node, n_nodes)
    if count == 0:
        return Rejection(
            tensor_parallel_size=tp,
            pipeline_parallel_size=pp,
            reason=f"TP={tp}, PP={pp}: equal whole stages need {n_nodes} nodes with "
            f"{per_node} GPU(s) each; the cluster has {len(pool.nodes)} node(s) of this kind",
        )
    quant, qwhy = _quant_arg(facts, node)
    if qwhy:
        return Rejection(tensor_parallel_size=tp, pipeline_parallel_size=pp, reason=qwhy)
    dtype, dw = _serve_dtype(facts, node)
    warnings += dw
    weights = weight_bytes_per_device(facts, dtype, tp, pp)
    reserve = reserve_bytes(facts, dtype, tp, node.accelerator, c, eager=eager)
    budget = int(node.gpu_memory_bytes * util)
    free = min(
        (n.gpu_memory_free_bytes for n in pool.nodes if n.gpu_memory_free_bytes is not None),
        default=None,
    )
    if free is not None and free < budget:
        # vLLM starts only when its whole share is free: plan with what is free, or say so.
        held = f"other processes hold {_gib(node.gpu_memory_bytes - free)}"
        lowered = int((free - c.free_memory_margin_bytes) * 100 / node.gpu_memory_bytes) / 100
        if util_pinned or lowered <= 0:
            return Rejection(
                tensor_parallel_size=tp,
                pipeline_parallel_size=pp,
                reason=f"TP={tp}, PP={pp}: a GPU has only {_gib(free)} free ({held}); "
                f"--gpu-memory-utilization {util:g} needs {_gib(budget)} free to start",
                cause="busy",
                needed_bytes_per_gpu=budget,
                available_bytes_per_gpu=free,
            )
        warnings.append(
            f"a GPU has only {_gib(free)} free ({held}): planned with "
            f"--gpu-memory-utilization {lowered:g} instead of {util:g}"
        )
        util, budget = lowered, int(node.gpu_memory_bytes * lowered)
    kv_tok = kv_bytes_per_token(facts, dtype, tp, pp)
    kv_bytes = budget - weights - reserve
    blocks = max(0, kv_bytes) // (kv_tok * c.kv_block_size)
    kv_tokens = blocks * c.kv_block_size
    model_max = facts.max_position_embeddings
    target = max_model_len or model_max
    label = f"TP={tp}, PP={pp}"
    if kv_tokens < target:
        floor = min(model_max, c.min_auto_context)
        lowered = kv_tokens // 256 * 256
        if max_model_len is None and objective != "context" and lowered >= floor:
            warnings.append(
                f"max_model_len lowered to {lowered} (the model supports {model_max}) so that "
                "one full sequence fits the KV cache"
            )
            target = lowered
        elif not (objective == "context" and max_model_len is None and lowered >= floor):
            need_len = target if max_model_len else floor
            needed = weights + reserve + need_len * kv_tok
            if kv_bytes <= 0:
                what = (
                    f"{_gib(weights)} of weights + {_gib(reserve)} reserve per GPU exceed the "
                    f"{_gib(budget)} usable ({_gib(node.gpu_memory_bytes)} x {util:g})"
                )
            else:
                what = (
                    f"the KV cache holds {kv_tokens} tokens, fewer than one "
                    f"{need_len}-token sequence (needs {_gib(needed)} per GPU, "
                    f"{_gib(budget)} usable)"
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
    if n_nodes > 1 and not tp_cross and not node.infiniband:
        warnings.append(
            f"PP={pp} crosses {n_nodes} nodes over Ethernet: hand-offs are small, but set "
            "NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME to the right interface"
        )
    if node.accelerator == "cpu":
        warnings.append("CPU backend: float32 and --enforce-eager; expect low speed")
    tps, ms = _speed(
        facts,
        node,
        c,
        tp=tp,
        pp=pp,
        tp_cross=tp_cross,
        pp_cross=n_nodes > 1,
        weights=weights,
        kv_tok=kv_tok,
        kv_tokens=kv_tokens,
        max_len=target,
        dtype=dtype,
    )
    if objective == "throughput":
        score = tps * count
    elif objective == "latency":
        score = 1e3 / ms
    else:
        score = float(target)
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
        score=round(score, 3),
        nodes=used,
        warnings=warnings,
    )


def _rank(objective: str, layouts: list[Layout], window: float) -> list[Layout]:
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

    def lowered(x: Layout) -> bool:
        return any(w.startswith("max_model_len lowered") for w in x.warnings)

    full = [x.score for x in layouts if not lowered(x)] or [x.score for x in layouts]
    best = max(full)

    def key(x: Layout) -> tuple[float, ...]:
        near = x.score >= best * (1 - window)
        return (lowered(x), not near, -x.replicas if near else 0, -x.score, x.gpus_per_replica)

    return sorted(layouts, key=key)


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
            needed_bytes=r.needed_bytes_per_gpu,
            available_bytes=free,
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
        f"a 4-bit quantized variant (~{_gib(weights / 3.5)} of weights instead of {_gib(weights)})"
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
        f"{facts.name} does not fit {cluster.summary()}: it needs about {_gib(needed)} "
        f"but {_gib(available)} is usable",
        needed_bytes=needed,
        available_bytes=available,
        why=best.reason,
        fix="U" + ", or ".join(remedies)[1:],
    )


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
    pools = _pools(cluster)
    if not pools:
        raise PlanError(
            f"The cluster ({cluster.description or 'given'}) has no GPUs to plan for",
            fix="describe GPU nodes, e.g. --cluster 2x4xL20",
        )
    feasible: list[Layout] = []
    rejected: list[Rejection] = []
    for tp, pp in _shapes(cluster, facts, allow_cross_node_tp):
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
            _evaluate(
                facts,
                pool,
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
            for pool in pools
        ]
        ok = [r for r in results if isinstance(r, Layout)]
        if not ok:
            rej = [r for r in results if isinstance(r, Rejection)]
            rejected.append(max(rej, key=lambda r: r.needed_bytes_per_gpu is not None))
            continue
        feasible.append(_merge(ok, objective))
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
            _with_replicas(lay, replicas, objective) for lay in feasible if lay.replicas >= replicas
        ]
    if not feasible:
        if tensor_parallel_size or pipeline_parallel_size or replicas:
            why = "; ".join(dict.fromkeys(r.reason for r in rejected))
            mem = [r for r in rejected if r.needed_bytes_per_gpu is not None]
            raise PlanError(
                "The requested layout cannot work: " + why,
                needed_bytes=mem[0].needed_bytes_per_gpu if mem else None,
                available_bytes=mem[0].available_bytes_per_gpu if mem else None,
                fix="Leave out --tp/--pp/--replicas to let raylm choose, or change them",
            )
        raise _nothing_fits(facts, cluster, rejected, gpu_memory_utilization, max_model_len)
    feasible = _rank(objective, feasible, c.throughput_tie_window)
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


def _merge(ok: list[Layout], objective: str) -> Layout:
    """One layout over several GPU pools: replicas add up, figures are the worst pool's."""
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
        }
    )


def _with_replicas(lay: Layout, n: int, objective: str) -> Layout:
    tps = lay.est_tokens_per_s * n / lay.replicas
    score = tps if objective == "throughput" else lay.score
    return lay.model_copy(update={"replicas": n, "est_tokens_per_s": round(tps, 1), "score": score})
