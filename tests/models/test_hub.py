"""Pulls through the real huggingface_hub client from a local server in the Hub's layout."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from fake_hf_hub import FakeHub

from raylm.errors import ModelError
from raylm.models.hub import pull
from raylm.models.manifest import sha256_file
from raylm.models.store import ModelStore


def test_pull_checks_every_file_and_writes_manifest(fake_hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    e = pull(fake_hub.repo, store=store)
    assert (e.name, e.source, e.repo, e.revision) == (
        "raylm-test--tiny-model",
        "hf",
        fake_hub.repo,
        fake_hub.commit,
    )
    assert e.verified and e.path == store.root / "raylm-test--tiny-model"
    for rel, data in fake_hub.files.items():
        assert (e.path / rel).read_bytes() == data
    assert sorted(p.relative_to(e.path).as_posix() for p in e.path.rglob("*") if p.is_file()) == (
        sorted(fake_hub.files)
    )
    m = store.read_manifest(e.name)
    assert m is not None
    assert {f.path: f.sha256 for f in m.files} == fake_hub.sha256
    assert store.resolve(fake_hub.repo).path == e.path  # by repo id too
    # What a rendered Kubernetes pod runs first (raylm.k8s.pods): verify by the repo id.
    assert store.verify(fake_hub.repo).ok
    assert list(store.tmp_dir().iterdir()) == []
    # Pulling again reuses the verified copy: no file is downloaded a second time.
    n = len([s for s in fake_hub.served if s[0] == "GET" and "/resolve/" in s[1]])
    assert pull(fake_hub.repo, store=store).path == e.path
    assert len([s for s in fake_hub.served if s[0] == "GET" and "/resolve/" in s[1]]) == n


def test_include_and_revision(fake_hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    e = pull(
        fake_hub.repo,
        store=store,
        revision=fake_hub.commit,
        include=["*.json"],
        name="tiny-configs",
    )
    assert sorted(p.name for p in e.path.iterdir()) == ["config.json", "tokenizer.json"]
    assert not fake_hub.downloads(
        "/raylm-test/tiny-model/resolve/" + fake_hub.commit + "/extra/notes.bin"
    )
    with pytest.raises(ModelError, match="matches"):
        pull(fake_hub.repo, store=store, include=["*.gguf"])
    with pytest.raises(ModelError, match="Revision nope of raylm-test/tiny-model not found"):
        pull(fake_hub.repo, store=store, revision="nope")
    with pytest.raises(ModelError, match="Repository other/repo not found"):
        pull("other/repo", store=store)


def test_corrupt_download_is_rejected_then_repaired(fake_hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    bad = "model-00002-of-00002.safetensors"
    fake_hub.corrupt = bad
    with pytest.raises(ModelError, match="do not match the hub's checksums") as ei:
        pull(fake_hub.repo, store=store)
    assert bad in str(ei.value) and "sha256" in str(ei.value)
    assert store.list_models() == []
    fake_hub.corrupt = None
    before = len(fake_hub.served)
    e = pull(fake_hub.repo, store=store)
    assert sha256_file(e.path / bad) == fake_hub.sha256[bad]
    fetched = {
        p.rsplit("/", 1)[-1]
        for m, p, _ in fake_hub.served[before:]
        if m == "GET" and "/resolve/" in p
    }
    assert fetched == {bad}  # only the rejected file came again


def test_interrupted_pull_resumes_without_refetching(fake_hub: FakeHub, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    big = "model-00001-of-00002.safetensors"
    fake_hub.broken = big
    with pytest.raises(ModelError, match="run the same pull again"):
        pull(fake_hub.repo, store=store)
    assert store.get("raylm-test--tiny-model") is None
    assert not (store.root / "raylm-test--tiny-model").exists()
    fake_hub.broken = None
    before = len(fake_hub.served)
    e = pull(fake_hub.repo, store=store)
    assert e.verified
    fetched = {
        p.rsplit("/", 1)[-1]
        for m, p, _ in fake_hub.served[before:]
        if m == "GET" and "/resolve/" in p
    }
    assert fetched == {big}


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="Cannot reach the Hugging Face hub") as ei:
        pull("Org/Model", store=ModelStore(tmp_path / "models"))
    assert ei.value.command == "raylm model import /path/to/model-dir"
    assert time.monotonic() - t0 < 60  # fails, not hangs (generous: not a speed assertion)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline mode is on"):
        pull("Org/Model", store=ModelStore(tmp_path / "models"))


def test_modelscope_unreachable_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelError, match="Cannot list Org/Model on ModelScope"):
        pull("Org/Model", source="modelscope", store=ModelStore(tmp_path / "models"))
