"""What one client may ask of the gateway: request limits, checked before routing, and
connection limits, enforced by the server. Declared once here; the spec (`[serve.limits]`)
and the gateway both use this model.

A request over a limit gets 400 (413 for the body size) with an OpenAI error body that
names the limit, before it reaches a replica: one request must never occupy a replica for
long enough to look dead (`n=1000` did), nor hold the gateway's memory or connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class GatewayLimits(BaseModel):
    """Per-request and per-connection limits of the gateway, with safe defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 above); read incrementally, so a "
        "larger body is refused before it is held in memory.",
    )
    max_json_depth: int = Field(
        default=64, ge=4, le=512, description="Deepest nesting of arrays and objects accepted."
    )
    max_n: int = Field(
        default=16, ge=1, description="Most completions one request may ask for (`n`)."
    )
    max_best_of: int = Field(
        default=16, ge=1, description="Largest `best_of` of a completions request."
    )
    max_prompts: int = Field(
        default=64,
        ge=1,
        description="Most prompts one request may carry (a `prompt` list, /batch_generate).",
    )
    max_request_tokens: int = Field(
        default=262144,
        ge=1,
        description="Most tokens one request may ask to generate in all: prompts x "
        "max(n, best_of) x max_tokens (the model's context when max_tokens is not given).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must send a request's headers within this time (from the "
        "connection, or from the request's first byte on a kept-alive one).",
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="A request's body must arrive within this time."
    )
    keep_alive_timeout_s: float = Field(
        default=30.0, gt=0, description="An idle kept-alive connection is closed after this."
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="Open client connections at most; past it a new one gets 503 with "
        "Retry-After and is closed.",
    )
    max_in_flight_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="Requests the gateway lets through at once per ready replica of a model; "
        "the rest wait in the gateway, interactive keys' first (raylm.gateway.admission). "
        "None: every request goes straight to a replica, whose engine queues in arrival "
        "order.",
    )
    max_queued_per_model: int = Field(
        default=256,
        ge=0,
        description="Requests that may wait for one model at once; past it 503 `queue_full` "
        "with Retry-After.",
    )
    queue_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request may wait in its model's queue; then 503 "
        "`queue_timeout` with Retry-After.",
    )


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the OpenAI error fields."""

    status: int
    message: str
    param: str | None
    code: str


def _count(value: Any) -> int | None:
    # An int that is not a bool; other types are left to vLLM's own validation.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def prompt_count(body: dict[str, Any]) -> int:
    """How many prompts a completions body carries (a list of strings or of token lists)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def admit(body: dict[str, Any], limits: GatewayLimits, context: int | None) -> Refusal | None:
    """The refusal of an OpenAI request body over a limit, or None to let it through.

    `context` is the model's context length when known (max_tokens may not exceed it).
    """
    n = _count(body.get("n")) or 1
    if n > limits.max_n:
        return Refusal(
            400, f"`n` is {n}; this endpoint allows at most {limits.max_n}.", "n", "n_over_limit"
        )
    best_of = _count(body.get("best_of")) or 1
    if best_of > limits.max_best_of:
        return Refusal(
            400,
            f"`best_of` is {best_of}; this endpoint allows at most {limits.max_best_of}.",
            "best_of",
            "best_of_over_limit",
        )
    prompts = prompt_count(body)
    if prompts > limits.max_prompts:
        return Refusal(
            400,
            f"{prompts} prompts is over this gateway's limit of {limits.max_prompts}; split "
            "the batch.",
            "prompt",
            "batch_too_large",
        )
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _count(body.get(key))
    if max_tokens is not None and context is not None and max_tokens > context:
        return Refusal(
            400,
            f"`{key}` is {max_tokens}, more than the model's context of {context} tokens.",
            key,
            "max_tokens_over_context",
        )
    per_sequence = max_tokens if max_tokens is not None else context
    if per_sequence is not None:
        total = prompts * max(n, best_of) * per_sequence
        if total > limits.max_request_tokens:
            return Refusal(
                400,
                f"The request may generate {total} tokens ({prompts} prompt(s) x "
                f"{max(n, best_of)} sequence(s) x {per_sequence}); this endpoint allows at "
                f"most {limits.max_request_tokens} per request.",
                key,
                "request_tokens_over_limit",
            )
    return None


def json_depth_over(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays/objects deeper than `limit` (iterative, stops early)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v if isinstance(x, dict | list))
    return False
