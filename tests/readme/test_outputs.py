"""Outputs the README shows are real: its `raylm plan` example, run as typed (the hub it
reads the model's config from is a local stand-in: no hub is reachable from CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from raylm.testing.machine import machine_base_env
from tests.readme.readme_doc import assert_shows, shown_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "planner"))
from fake_hub import fake_hub

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def test_plan_example_is_real_output(tmp_path: Path) -> None:
    command, expected = shown_output("Planning: `raylm plan`", "raylm plan")
    cfg = (FIXTURES / "qwen2.5-32b-instruct-gptq-int4.json").read_bytes()
    bin_dir = str(Path(sys.executable).parent)
    with fake_hub({"Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4": {"config.json": cfg}}) as url:
        env = {
            **machine_base_env(),
            "HF_ENDPOINT": url,
            "HOME": str(tmp_path),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        p = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120
        )
    assert p.returncode == 0, p.stderr
    assert_shows(expected, p.stdout)
