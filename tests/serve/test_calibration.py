"""The planner's memory model against what the live replicas' vLLM logged when it loaded
(the demo model on CPU): weight bytes and KV-cache capacity agree within 10%."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylm.models.store import ModelStore
from raylm.models.weights import read_model_facts
from raylm.planner.calibration import parse_vllm_load_log
from raylm.planner.memory import kv_bytes_per_token, weight_bytes_per_device
from tests.conftest import Served


def test_planner_matches_vllm_on_the_demo_model(served: Served) -> None:
    logs = sorted((served.home / "logs" / "pytest").glob("*-rank0.log"))
    assert logs, f"no replica log under {served.home / 'logs' / 'pytest'}"
    figures = parse_vllm_load_log(logs[0].read_text(errors="replace"))
    facts = read_model_facts(Path(ModelStore(served.home / "models").resolve(None).path))

    planned_weights = weight_bytes_per_device(facts, "float32", 1, 1)
    assert planned_weights == pytest.approx(figures.weight_bytes, rel=0.10)

    assert figures.kv_cache_bytes is not None
    planned_tokens = figures.kv_cache_bytes / kv_bytes_per_token(facts, "float32", 1, 1)
    assert planned_tokens == pytest.approx(figures.kv_cache_tokens, rel=0.10)
