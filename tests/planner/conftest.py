"""Fixtures of the planner tests: the seeds' model configs and the real demo model's header."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from raylm.models.facts import ModelFacts, facts_from_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = FIXTURES / "models"
DEMO_CONFIG_DIR = MODELS / "smollm2-135m-demo"
# Size of the converted demo model's model.safetensors (float32, 538 MB).
DEMO_FILE_SIZE = 538090408


@pytest.fixture
def model_facts() -> Callable[[str], ModelFacts]:
    """Facts of a seed model from its public config.json excerpt."""

    def load(stem: str) -> ModelFacts:
        return facts_from_config(json.loads((MODELS / f"{stem}.json").read_text()), name=stem)

    return load


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """The demo model's directory: its real config.json and a model.safetensors with the
    real header, sparse beyond it (the reader must never touch tensor data)."""
    d = tmp_path / "smollm2-135m-instruct"
    d.mkdir()
    (d / "config.json").write_bytes((DEMO_CONFIG_DIR / "config.json").read_bytes())
    header = (DEMO_CONFIG_DIR / "safetensors-header.json").read_bytes()
    with (d / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.truncate(DEMO_FILE_SIZE)
    return d
