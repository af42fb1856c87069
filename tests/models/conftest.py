"""Shared fixtures of the model-store tests: one real demo conversion for the whole run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hf_hub import FakeHub

from raylm.models.gguf import DEMO_NAME
from raylm.models.store import ModelEntry, ModelStore


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store holding the demo model, converted once from the real GGUF file."""
    store = ModelStore(tmp_path_factory.mktemp("demo-store") / "models")
    store.resolve(None)
    return store


@pytest.fixture(scope="session")
def demo_entry(demo_store: ModelStore) -> ModelEntry:
    e = demo_store.get(DEMO_NAME)
    assert e is not None
    return e


@pytest.fixture
def demo_copy(demo_store: ModelStore, tmp_path: Path) -> ModelStore:
    """A private store holding a byte-identical copy (mtimes kept) of the demo store."""
    dst = tmp_path / "copy" / "models"
    shutil.copytree(demo_store.root, dst, ignore=shutil.ignore_patterns("locks", "tmp"))
    return ModelStore(dst)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield hub
    hub.close()
