"""The GPU suite: raylm's GPU paths driven through its CLI, on a real GPU machine.

Skipped (with the reason) where CUDA, vLLM's GPU build or NVML is missing, so CI on CPU
stays green. docs/gpu-testing.md says how to bring vLLM and Ray to a GPU machine with no
network and run this. Models are built there from a config (random weights, the demo
model's tokenizer from $RAYLM_GPU_TOKENIZER): nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gpu.harness import build_tiny_model, gpu_env, raylm, require_gpus


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_gpus(1)
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh machine's environment; `raylm down` afterwards, whatever happened."""
    env = gpu_env(tmp_path / "home")
    yield env
    raylm(env, "down", timeout=120)
