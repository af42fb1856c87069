"""`raylm model ...` as a user runs it: JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fake_hf_hub import FakeHub


def raylm(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "RAYLM_HOME": str(home), **(env or {})}
    e.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "raylm.cli.main", "model", *args],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_list_verify_rm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = tmp_path / "tiny"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "model.safetensors").write_bytes(os.urandom(2_000_000))
    p = raylm(home, "import", str(src), "--name", "tiny", "--json")
    assert p.returncode == 0, p.stderr
    e = json.loads(p.stdout)
    assert (e["name"], e["source"], e["path"], e["verified"]) == ("tiny", "local", str(src), True)
    p = raylm(home, "list", "--json")
    assert [r["name"] for r in json.loads(p.stdout)] == ["tiny"]
    assert raylm(home, "verify", "tiny").returncode == 0
    with open(src / "model.safetensors", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\1\2")
    p = raylm(home, "verify", "tiny", "--json")
    assert p.returncode == 1
    res = json.loads(p.stdout)
    assert [(x["path"], x["problem"]) for x in res["local"]["problems"]] == [
        ("model.safetensors", "sha256")
    ]
    assert "model.safetensors" in p.stderr and "Traceback" not in p.stderr
    assert raylm(home, "rm", "tiny").returncode == 0
    assert (src / "model.safetensors").exists()  # registered in place: files stay
    p = raylm(home, "rm", "tiny")
    assert p.returncode == 1 and "not in the store" in p.stderr and "Traceback" not in p.stderr
    p = raylm(home, "list", "--json")
    assert json.loads(p.stdout) == []


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args, expect in [
        (("import", str(tmp_path / "nope")), "does not exist"),
        (("verify", "ghost"), "not in the store"),
        (("pull", "Org/Model", "--source", "ftp"), "Unknown --source"),
        (("sync", "ghost"), "No Ray cluster"),
        (("import", str(tmp_path), "--name", "../x"), "config.json"),
    ]:
        p = raylm(home, *args)
        assert p.returncode != 0, args
        assert expect in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr, args


def test_pull_through_the_cli(tmp_path: Path) -> None:
    hub = FakeHub()
    try:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1"}
        p = raylm(tmp_path / "home", "pull", hub.repo, "--include", "*.json", "--json", env=env)
        assert p.returncode == 0, p.stderr
        e = json.loads(p.stdout)
        assert (e["repo"], e["revision"], e["verified"]) == (hub.repo, hub.commit, True)
        assert sorted(x.name for x in Path(e["path"]).iterdir()) == [
            "config.json",
            "tokenizer.json",
        ]
    finally:
        hub.close()
