"""What the planner needs to know about a model, derived from its config.json alone.

`config.json` gives the shape (layers, heads, vocabulary); the bytes are estimated from the
parameter count the config implies, with quantization (GPTQ/AWQ, bitsandbytes, FP8) and tied
embeddings accounted for. Pure: no files or network are read here. The exact bytes of local
weight files come from `raylm.models.weights`, a hub model's config from
`raylm.models.hub_config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ModelError

DTYPE_BYTES: dict[str, float] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
    "uint8": 1,
    "int32": 4,
    "int64": 8,
    "float64": 8,
    "bool": 1,
}
_DTYPE_ALIASES = {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "float": "float32"}
# Architectures whose MLP has no gate projection (two matrices instead of three).
_UNGATED = {"gpt2", "gpt_neox", "opt", "falcon", "gpt_bigcode", "bloom", "phi", "gptj"}


class Quantization(BaseModel):
    """How the linear layers' weights are stored when they are not in `torch_dtype`."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="vLLM's name for the method: gptq, awq, bitsandbytes, fp8...")
    bits: int = Field(description="Bits per quantized weight (4 or 8).")
    group_size: int | None = Field(
        default=None, description="Weights sharing one scale (GPTQ/AWQ); None when per-channel."
    )

    def bytes_per_param(self) -> float:
        """Average stored bytes per quantized parameter, scales and zero points included."""
        base = self.bits / 8
        if self.method in ("gptq", "awq", "compressed-tensors") and self.group_size:
            # One fp16 scale and one packed zero point per group.
            return base + (2 + self.bits / 8) / self.group_size
        if self.method == "bitsandbytes" and self.bits == 4:
            return base + 4 / 64  # one fp32 absmax per block of 64
        return base


class ModelFacts(BaseModel):
    """The shape and size of a model, as far as memory planning needs them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name: directory name, hub id or config's name.")
    architecture: str = Field(description="First entry of config.json `architectures`.")
    model_type: str = Field(description="config.json `model_type` (llama, qwen2, ...).")
    num_layers: int = Field(description="Transformer blocks (`num_hidden_layers`).")
    hidden_size: int = Field(description="Residual stream width.")
    intermediate_size: int = Field(description="MLP inner width (dense layers).")
    num_attention_heads: int = Field(description="Query heads; TP must divide it.")
    num_kv_heads: int = Field(description="Key/value heads (GQA); equals query heads for MHA.")
    head_dim: int = Field(description="Width of one attention head.")
    vocab_size: int = Field(description="Vocabulary size (rows of the embedding matrix).")
    tie_word_embeddings: bool = Field(description="True when the LM head reuses the embedding.")
    max_position_embeddings: int = Field(description="Longest context the model supports.")
    torch_dtype: str = Field(description="Dtype of the unquantized weights (float16, bfloat16...).")
    quantization: Quantization | None = Field(
        default=None, description="Quantization of the linear layers, None for full precision."
    )
    num_params: int = Field(description="Parameter count (exact from headers, else from config).")
    weight_bytes: int = Field(
        description="Bytes of all weights as stored: exact from safetensors headers, else "
        "estimated from the parameter count, dtype and quantization."
    )
    weight_bytes_exact: bool = Field(description="True when weight_bytes comes from headers.")
    embedding_bytes: int = Field(description="Bytes of the input embedding matrix.")
    lm_head_bytes: int = Field(
        description="Bytes of a separate LM head; 0 when tied to the embedding."
    )
    kv_lora_rank: int | None = Field(
        default=None, description="MLA latent width (DeepSeek-V2/V3); None for ordinary attention."
    )
    qk_rope_head_dim: int | None = Field(
        default=None, description="MLA rotary part of the key, cached beside the latent."
    )
    sliding_window: int | None = Field(
        default=None, description="Sliding-window size from config.json, if any."
    )
    source: Literal["safetensors", "safetensors-index", "config"] = Field(
        description="Where weight_bytes came from: headers of the weight files, the "
        "safetensors index's total_size, or the config alone."
    )
    origin: str = Field(description="The path or hub id the facts were read from.")
    notes: list[str] = Field(
        default_factory=list, description="Assumptions made while reading (estimates, guesses)."
    )

    @property
    def body_bytes(self) -> int:
        """Bytes of the transformer blocks (everything but embedding and LM head)."""
        return max(0, self.weight_bytes - self.embedding_bytes - self.lm_head_bytes)

    @property
    def checkpoint_dtype_bytes(self) -> float:
        return DTYPE_BYTES.get(self.torch_dtype, 2)


def _norm_dtype(v: Any) -> str:
    s = str(v or "").replace("torch.", "").strip().lower()
    return _DTYPE_ALIASES.get(s, s)


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs (Qwen2.5-VL, Gemma 3, Llama 4) nest the language model's shape.
    inner = cfg.get("text_config") or cfg.get("llm_config")
    if isinstance(inner, dict):
        merged = {**cfg, **inner}
        merged.setdefault("quantization_config", cfg.get("quantization_config"))
        return merged
    return cfg


def _quantization(cfg: dict[str, Any]) -> Quantization | None:
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return None
    method = str(q.get("quant_method") or "").lower()
    if method == "bitsandbytes" or q.get("load_in_4bit") or q.get("load_in_8bit"):
        return Quantization(method="bitsandbytes", bits=4 if q.get("load_in_4bit") else 8)
    if method in ("fp8", "fbgemm_fp8") or "fp8" in str(q.get("fmt", "")).lower():
        return Quantization(method="fp8", bits=8)
    bits = q.get("bits") or q.get("w_bit") or q.get("weight_bits")
    gs = q.get("group_size") or q.get("q_group_size")
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        for g in groups.values() if isinstance(groups, dict) else []:
            w = g.get("weights") or {}
            bits = bits or w.get("num_bits")
            gs = gs or w.get("group_size")
            if w.get("type") == "float" and w.get("num_bits") == 8:
                return Quantization(method="compressed-tensors", bits=8)
    if not method:
        return None
    if not bits:
        raise ModelError(
            f"Cannot tell how many bits quantization {method!r} uses",
            why="quantization_config has no bits/w_bit/num_bits field",
            fix="check the model's config.json or use a model with a standard quantization",
        )
    group = int(gs) if gs and int(gs) > 0 else None
    return Quantization(method=method, bits=int(bits), group_size=group)


def _param_counts(c: dict[str, Any]) -> tuple[int, int, int, int]:
    """(linear params in the blocks, other block params, embedding params, lm_head params)."""
    h, n_layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    d = int(c.get("head_dim") or h // heads)
    inter = int(c.get("intermediate_size") or 4 * h)
    vocab = int(c["vocab_size"])
    if c.get("kv_lora_rank"):
        # MLA (DeepSeek-V2/V3): low-rank q/kv projections.
        r, rope = int(c["kv_lora_rank"]), int(c.get("qk_rope_head_dim") or 64)
        nope = int(c.get("qk_nope_head_dim") or 128)
        vd = int(c.get("v_head_dim") or 128)
        qr = c.get("q_lora_rank")
        q = h * heads * (nope + rope) if not qr else h * int(qr) + int(qr) * heads * (nope + rope)
        attn = q + h * (r + rope) + r * heads * (nope + vd) + heads * vd * h
    else:
        attn = h * heads * d + 2 * h * kv * d + heads * d * h
    mats = 2 if c.get("model_type") in _UNGATED else 3
    dense_mlp = mats * h * inter
    experts = int(
        c.get("num_local_experts") or c.get("num_experts") or c.get("n_routed_experts") or 0
    )
    linear = 0
    first_dense = int(c.get("first_k_dense_replace") or 0)
    for i in range(n_layers):
        if experts and i >= first_dense:
            moe_inter = int(c.get("moe_intermediate_size") or inter)
            shared = int(c.get("n_shared_experts") or 0) * moe_inter + int(
                c.get("shared_expert_intermediate_size") or 0
            )
            linear += attn + experts * 3 * h * moe_inter + 3 * h * shared + h * experts
        else:
            linear += attn + dense_mlp
    other = n_layers * 2 * h + h  # norms
    embed = vocab * h
    lm_head = 0 if c.get("tie_word_embeddings") else vocab * h
    return linear, other, embed, lm_head


def facts_from_config(
    config: dict[str, Any], *, name: str = "", origin: str = "config.json"
) -> ModelFacts:
    """ModelFacts from a parsed config.json alone; weight bytes are estimated.

    Raises ModelError when a field the planner needs is missing.
    """
    c = _text_config(config)
    missing = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not c.get(k)
    ]
    if missing:
        raise ModelError(
            f"config.json of {name or origin} lacks {', '.join(missing)}",
            model=name or origin,
            why="the planner needs the layer count, widths, heads and vocabulary",
            fix="point at a decoder-only language model's config.json",
        )
    notes: list[str] = []
    dtype = _norm_dtype(c.get("torch_dtype") or c.get("dtype"))
    if dtype not in DTYPE_BYTES:
        notes.append(f"config.json gives no usable dtype ({dtype or 'none'}); assumed bfloat16")
        dtype = "bfloat16"
    quant = _quantization(c)
    linear, other, embed, lm_head = _param_counts(c)
    wb = DTYPE_BYTES[dtype]
    # Quantization covers the blocks' linear layers; embeddings, LM head and norms keep dtype.
    linear_bytes = linear * (quant.bytes_per_param() if quant else wb)
    weight_bytes = int(linear_bytes + (other + embed + lm_head) * wb)
    heads = int(c["num_attention_heads"])
    archs = c.get("architectures") or [c.get("model_type") or "unknown"]
    max_pos = (
        c.get("max_position_embeddings") or c.get("max_sequence_length") or c.get("seq_length")
    )
    if not max_pos:
        notes.append("config.json gives no max_position_embeddings; assumed 2048")
    rope_scaling = c.get("rope_scaling")
    if (
        isinstance(rope_scaling, dict)
        and rope_scaling.get("factor")
        and rope_scaling.get("original_max_position_embeddings")
    ):
        max_pos = max(
            int(max_pos or 0),
            int(rope_scaling["factor"] * rope_scaling["original_max_position_embeddings"]),
        )
    if quant is None and c.get("quantization_config"):
        notes.append("quantization_config present but not understood; assumed full precision")
    return ModelFacts(
        name=name or str(c.get("_name_or_path") or archs[0]),
        architecture=str(archs[0]),
        model_type=str(c.get("model_type") or ""),
        num_layers=int(c["num_hidden_layers"]),
        hidden_size=int(c["hidden_size"]),
        intermediate_size=int(c.get("intermediate_size") or 4 * int(c["hidden_size"])),
        num_attention_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or int(c["hidden_size"]) // heads),
        vocab_size=int(c["vocab_size"]),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        max_position_embeddings=int(max_pos or 2048),
        torch_dtype=dtype,
        quantization=quant,
        num_params=linear + other + embed + lm_head,
        weight_bytes=weight_bytes,
        weight_bytes_exact=False,
        embedding_bytes=int(embed * wb),
        lm_head_bytes=int(lm_head * wb),
        kv_lora_rank=int(c["kv_lora_rank"]) if c.get("kv_lora_rank") else None,
        qk_rope_head_dim=int(c.get("qk_rope_head_dim") or 64) if c.get("kv_lora_rank") else None,
        sliding_window=int(c["sliding_window"]) if c.get("sliding_window") else None,
        source="config",
        origin=origin,
        notes=notes,
    )
