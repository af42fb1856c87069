"""Fuzzing the gateway with vLLM's own OpenAPI schema (fetched from the real replica):
valid and invalid requests to /v1/chat/completions, /v1/completions and /v1/models find no
5xx, and every 4xx carries an OpenAI error body.

Generation is capped (`max_tokens`, `n`, `best_of`) so the run stays short on a CPU
replica; example counts are small and the run is derandomized, so it is repeatable.
vLLM's schema declares an error `code` as an integer; the gateway's own errors follow
OpenAI, whose `code` is a string (`invalid_api_key`, `model_not_found`): bodies are
checked for OpenAI's shape, not vLLM's integer.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from gateway_harness import RunningGateway
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

OPERATIONS = {("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models")}
EXAMPLES = 25


def _cap(case: Any) -> Any:
    """What the generator may ask of a CPU replica: a few tokens, a few sequences."""
    if isinstance(case.body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(key)
            case.body[key] = min(value, 4) if isinstance(value, int) and value > 0 else 4
        for key in ("n", "best_of"):
            if isinstance(case.body.get(key), int) and case.body[key] > 2:
                case.body[key] = 2
    return case


def _check(r: Any, label: str) -> None:
    assert r.status_code < 500, f"{label}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        err = r.json().get("error")
        assert isinstance(err, dict) and isinstance(err.get("message"), str), r.text[:500]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_vllm_schema_finds_no_5xx(
    gw: RunningGateway, replica_url: str, mode: GenerationMode
) -> None:
    raw = httpx.get(replica_url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    ops = [
        op
        for result in schema.get_all_operations()
        if (op := result.ok()) is not None and (op.method.upper(), op.path) in OPERATIONS
    ]
    assert {(op.method.upper(), op.path) for op in ops} == OPERATIONS
    calls = 0
    for op in ops:
        if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # /v1/models takes no input: nothing to make invalid

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode).map(_cap))
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            _check(case.call(base_url=gw.url, timeout=120), f"{case.method} {case.path}")

        run()
    assert calls >= 2 * 5
