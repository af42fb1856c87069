"""Read what vLLM itself logs about memory when it loads, to check the planner against it.

GPU builds log "Model loading took X GiB" and "Available KV cache memory: Y GiB"; the CPU
build logs "Checkpoint size: X GiB" and "Auto set (Y/TOTAL) GiB for KV cache". Both log
"<device> KV cache size: N tokens".
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from raylm.errors import ReplicaError
from raylm.units import GIB

_WEIGHT_RES = (
    re.compile(r"Model loading took ([\d.]+) ?GiB"),
    re.compile(r"Checkpoint size: ([\d.]+) ?GiB"),
)
_KV_BYTES_RES = (
    re.compile(r"Available KV cache memory: ([\d.]+) ?GiB"),
    re.compile(r"(?:Auto|Explicitly) set \(([\d.]+)/[\d.]+\) GiB for KV cache"),
)
_CPU_TOTAL_RE = re.compile(r"(?:Auto|Explicitly) set \([\d.]+/([\d.]+)\) GiB for KV cache")
_KV_TOKENS_RE = re.compile(r"(?:GPU|CPU|XPU|TPU)? ?KV cache size: ([\d,]+) tokens")
_CONCURRENCY_RE = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")


class VllmLoadFigures(BaseModel):
    """Memory figures vLLM reported while loading one engine (last values in the log)."""

    model_config = ConfigDict(extra="forbid")

    weight_bytes: int = Field(description="Weights as vLLM measured or sized them (bytes).")
    kv_cache_tokens: int = Field(description="Tokens the KV cache holds.")
    kv_cache_bytes: int | None = Field(
        default=None, description="Memory given to the KV cache, when logged (bytes)."
    )
    device_memory_bytes: int | None = Field(
        default=None,
        description="Total memory vLLM's CPU worker saw on its NUMA node (the TOTAL of "
        "'Auto set (KV/TOTAL) GiB'), when logged: the device memory a plan should assume.",
    )
    max_model_len: int | None = Field(
        default=None, description="max_model_len of the concurrency line, when logged."
    )
    max_concurrency: float | None = Field(
        default=None, description="vLLM's 'Maximum concurrency' figure, when logged."
    )

    @property
    def kv_bytes_per_token(self) -> float | None:
        """KV bytes one token takes on one device, as implied by the log (2-digit GiB)."""
        if not self.kv_cache_bytes or not self.kv_cache_tokens:
            return None
        return self.kv_cache_bytes / self.kv_cache_tokens


def _last(patterns: tuple[re.Pattern[str], ...], text: str) -> str | None:
    hits = [(m.start(), m.group(1)) for p in patterns for m in p.finditer(text)]
    return max(hits)[1] if hits else None


def parse_vllm_load_log(text: str) -> VllmLoadFigures:
    """Weight bytes, KV tokens and KV bytes from a vLLM server log.

    Raises ReplicaError when the log lacks the weight or KV-cache lines (the engine did not
    finish loading, or its log format changed).
    """
    weight = _last(_WEIGHT_RES, text)
    tokens = [m.group(1) for m in _KV_TOKENS_RE.finditer(text)]
    if weight is None or not tokens:
        missing = [n for n, v in (("weight size", weight), ("KV cache size", tokens)) if not v]
        raise ReplicaError(
            f"The vLLM log has no {' or '.join(missing)} line",
            why="the engine did not finish loading, or this vLLM logs them differently",
            fix="wait until the server logs 'Starting vLLM server', or check its version",
        )
    kv = _last(_KV_BYTES_RES, text)
    conc = list(_CONCURRENCY_RE.finditer(text))
    total = _last((_CPU_TOTAL_RE,), text)
    return VllmLoadFigures(
        weight_bytes=int(float(weight) * GIB),
        kv_cache_tokens=int(tokens[-1].replace(",", "")),
        kv_cache_bytes=int(float(kv) * GIB) if kv else None,
        device_memory_bytes=int(float(total) * GIB) if total else None,
        max_model_len=int(conc[-1].group(1).replace(",", "")) if conc else None,
        max_concurrency=float(conc[-1].group(2)) if conc else None,
    )
