"""The per-device memory model and the rough speed model used to score layouts.

Per device (GPU, or a CPU node under vLLM's CPU backend), vLLM splits
`memory x gpu_memory_utilization` into the weights of its stage, a reserve for activations
and workspaces (and CUDA graphs), and the KV cache, which gets the rest. All constants below
are documented in docs/planner.md and can be overridden by passing a `PlannerConstants`.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from raylm.models.facts import DTYPE_BYTES, ModelFacts
from raylm.planner.cluster import NodeSpec
from raylm.units import GIB


class PlannerConstants(BaseModel):
    """Tunable figures of the memory and speed models (defaults explained in docs/planner.md)."""

    model_config = ConfigDict(extra="forbid")

    free_memory_margin_bytes: int = Field(
        default=1 * GIB,
        description="Memory kept free on a GPU other processes partly use, when the planner "
        "lowers gpu_memory_utilization to what is free: vLLM refuses to start unless its "
        "whole share is free, and its own CUDA context needs some on top.",
    )
    gpu_overhead_bytes: int = Field(
        default=1 * GIB,
        description="Per-GPU memory vLLM counts outside weights and KV that does not grow "
        "with the batch: CUDA context, NCCL buffers, cuBLAS workspaces.",
    )
    cuda_graph_reserve_bytes: int = Field(
        default=GIB // 2,
        description="Per-GPU memory for captured CUDA graphs; 0 with --enforce-eager.",
    )
    max_num_batched_tokens: int = Field(
        default=2048,
        description="Tokens in vLLM's profiling batch; activations scale with it "
        "(vLLM's default for the OpenAI server on most GPUs).",
    )
    cpu_overhead_bytes: int = Field(
        default=int(0.94 * GIB),
        description="CPU backend: resident memory of a vLLM worker beyond its weights "
        "(Python, torch, vLLM, profiling buffers); measured 0.94 GiB for the demo model.",
    )
    kv_block_size: int = Field(default=16, description="Tokens per KV-cache block.")
    typical_context_tokens: int = Field(
        default=1024, description="KV length of an average running sequence, for scoring."
    )
    max_num_seqs: int = Field(default=256, description="vLLM's cap on running sequences.")
    default_gpu_bandwidth_gbps: float = Field(
        default=1000.0, description="Memory bandwidth assumed for a GPU not in the table."
    )
    cpu_bandwidth_gbps: float = Field(default=20.0, description="Memory bandwidth of a CPU node.")
    nvlink_gbps: float = Field(default=150.0, description="All-reduce bandwidth over NVLink.")
    pcie_gbps: float = Field(default=20.0, description="All-reduce bandwidth over PCIe.")
    infiniband_gbps: float = Field(default=20.0, description="Node-to-node bandwidth with IB.")
    ethernet_gbps: float = Field(default=2.5, description="Node-to-node bandwidth without IB.")
    intra_latency_us: float = Field(default=10.0, description="Latency of one in-node collective.")
    inter_latency_us: float = Field(default=30.0, description="Latency of one cross-node message.")
    pp_stage_efficiency: float = Field(
        default=0.85,
        description="Throughput kept per extra pipeline stage (bubbles, uneven stages, the "
        "per-step scheduling PP adds); 0.85 makes PP the choice only when it buys capacity.",
    )
    throughput_tie_window: float = Field(
        default=0.05,
        description="Estimates within this fraction of the best count as equal; among them "
        "the layout with more replicas wins.",
    )
    min_auto_context: int = Field(
        default=2048,
        description="When max_model_len is not given and the model's full context does not "
        "fit, the planner lowers it, but not below this (or the model's maximum if smaller).",
    )


def serve_weight_bytes(facts: ModelFacts, dtype: str) -> tuple[int, int, int]:
    """(body, embedding, lm_head) bytes once loaded in `dtype` (quantized parts unchanged)."""
    if facts.quantization is not None:
        return facts.body_bytes, facts.embedding_bytes, facts.lm_head_bytes
    f = DTYPE_BYTES.get(dtype, 2) / facts.checkpoint_dtype_bytes
    return int(facts.body_bytes * f), int(facts.embedding_bytes * f), int(facts.lm_head_bytes * f)


def layers_per_stage(facts: ModelFacts, pp: int) -> int:
    """Layers on the busiest pipeline stage."""
    return math.ceil(facts.num_layers / pp)


def weight_bytes_per_device(facts: ModelFacts, dtype: str, tp: int, pp: int) -> int:
    """Weights on the fullest device: its share of the blocks plus the embedding (first
    stage) and LM head (last stage), both split over TP. A tied LM head is a second copy
    when first and last stage differ."""
    body, emb, head = serve_weight_bytes(facts, dtype)
    if facts.tie_word_embeddings and head == 0 and pp > 1:
        head = emb
    stage_body = body * layers_per_stage(facts, pp) / facts.num_layers
    ends = emb + head if pp == 1 else max(emb, head)
    return int((stage_body + ends) / tp)


def kv_bytes_per_token(facts: ModelFacts, dtype: str, tp: int, pp: int) -> int:
    """KV-cache bytes one token takes on one device of the busiest stage.

    2 (K and V) x layers/PP x max(1, kv_heads/TP) x head_dim x dtype bytes: KV heads are
    replicated when TP exceeds them. MLA caches one latent per layer, not split by TP.
    """
    b = DTYPE_BYTES.get(dtype, 2)
    layers = layers_per_stage(facts, pp)
    if facts.kv_lora_rank:
        return int(layers * (facts.kv_lora_rank + (facts.qk_rope_head_dim or 0)) * b)
    return int(2 * layers * max(1, facts.num_kv_heads // tp) * facts.head_dim * b)


def reserve_bytes(
    facts: ModelFacts, dtype: str, tp: int, accelerator: str, c: PlannerConstants, *, eager: bool
) -> int:
    """Activation/workspace (+ CUDA graph) reserve of one device."""
    if accelerator == "cpu":
        return c.cpu_overhead_bytes
    act = DTYPE_BYTES.get(dtype, 2)
    # Profiling batch: hidden states, q/k/v/o and the MLP's gate+up, split by TP; plus
    # fp32 logits of the sampled rows.
    per_token = (4 * facts.hidden_size + 2 * facts.intermediate_size / tp) * act
    logits = c.max_num_seqs * facts.vocab_size / tp * 4
    graphs = 0 if eager else c.cuda_graph_reserve_bytes
    return int(c.gpu_overhead_bytes + c.max_num_batched_tokens * per_token + logits + graphs)


def _link_gbps(node: NodeSpec, c: PlannerConstants, *, cross_node: bool) -> tuple[float, float]:
    if cross_node:
        bw = c.infiniband_gbps if node.infiniband else c.ethernet_gbps
        return bw, c.inter_latency_us
    return (c.nvlink_gbps if node.nvlink else c.pcie_gbps), c.intra_latency_us


def decode_speed(
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
