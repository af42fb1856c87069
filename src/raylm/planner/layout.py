"""What a plan is: a `Layout` (one way to serve the model), a `Rejection` (a shape that
cannot work, and why) and the `PlanResult` that holds them.

Only the models live here, so the modules that build them (shapes, evaluate, rank, search)
can all import them without importing each other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    max_model_len_lowered: bool = Field(
        default=False,
        # Excluded from dumps so `raylm plan --json` and saved plans keep their keys.
        exclude=True,
        description="The planner lowered max_model_len below the model's context so that one "
        "sequence fits the KV cache; the throughput objective ranks such layouts after those "
        "that keep the full context. Not serialized, so False on a reloaded layout.",
    )

    def shape(self) -> str:
        """'N replica(s) x TP=t PP=p, max_model_len m': how the plan is named in words."""
        return (
            f"{self.replicas} replica(s) x TP={self.tensor_parallel_size} "
            f"PP={self.pipeline_parallel_size}, max_model_len {self.max_model_len}"
        )


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
