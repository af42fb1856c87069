"""`raylm plan` as users run it: the real console script, JSON and human output, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from fake_hub import fake_hub
from safetensors.numpy import save_file
from typer.testing import CliRunner

from raylm.cli import plan as plan_cli

RAYLM = str(Path(sys.executable).with_name("raylm"))
MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
QWEN32 = str(MODELS / "qwen2.5-32b-instruct-gptq-int4.json")
R1_70B = str(MODELS / "deepseek-r1-distill-llama-70b.json")


def raylm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAYLM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_json_is_the_only_stdout_and_has_the_contract() -> None:
    p = raylm("plan", QWEN32, "--cluster", "2x4xL20", "--max-model-len", "4096", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) >= {"plan", "alternatives", "rejected", "vllm_command"}
    for key in (
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "replicas",
        "gpus_per_replica",
        "max_model_len",
        "weight_bytes_per_gpu",
        "kv_cache_tokens_per_replica",
        "max_concurrent_seqs",
    ):
        assert isinstance(doc["plan"][key], int), key
    assert doc["plan"]["replicas"] > 1
    shapes = {(a["tensor_parallel_size"], a["pipeline_parallel_size"]) for a in doc["alternatives"]}
    assert (4, 2) in shapes
    assert all(
        set(r) >= {"tensor_parallel_size", "pipeline_parallel_size", "reason"}
        for r in doc["rejected"]
    )
    assert doc["vllm_command"][:2] == ["vllm", "serve"]


def test_nothing_fits_exits_nonzero_with_the_numbers() -> None:
    p = raylm("plan", R1_70B, "--cluster", "1x1x80GB", "--max-model-len", "8192", "--json")
    assert p.returncode != 0 and p.stdout == ""
    err = " ".join(p.stderr.split())
    assert "does not fit" in err and "GiB" in err and "72.0 GiB is usable" in err
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--cluster", "2x4xWHATEVER"], "Unknown GPU"),
        (["--cluster", "2by4"], "Cannot read cluster description"),
        (["--cluster", "2x4xL20", "--max-model-len", "999999"], "exceeds"),
        (["--cluster", "2x4xL20", "--gpu-memory-utilization", "2"], "out of range"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], match: str) -> None:
    p = raylm("plan", QWEN32, *args)
    assert p.returncode == 1
    assert match in " ".join(p.stderr.split()) and "Traceback" not in p.stderr


def test_unknown_model_and_objective() -> None:
    p = raylm("plan", "/nonexistent/model", "--cluster", "2x4xL20")
    assert p.returncode == 1 and "does not exist" in p.stderr
    p = raylm("plan", QWEN32, "--cluster", "2x4xL20", "--objective", "cheapest")
    assert p.returncode == 1 and "throughput" in p.stderr


def _app() -> typer.Typer:
    app = typer.Typer()
    plan_cli.register(app)
    app.command("noop")(lambda: None)  # two commands: `plan` stays a sub-command
    return app


def test_human_output_shows_plan_table_rejections_and_command(demo_dir: Path) -> None:
    r = CliRunner().invoke(
        _app(), ["plan", str(demo_dir), "--cluster", "1x4xL20"], env={"COLUMNS": "160"}
    )
    assert r.exit_code == 0, r.output
    out = r.output
    assert "plan: TP=1 PP=1 x 4 replica(s)" in out
    assert "feasible layouts" in out
    assert "TP=2: 9 attention heads are not divisible by 2" in out
    assert f"vllm serve {demo_dir} --served-model-name smollm2-135m-instruct" in out
    assert "--tensor-parallel-size 1 --pipeline-parallel-size 1" in out


def test_hub_id_fetches_only_config_and_index(tmp_path: Path) -> None:
    cfg = (MODELS / "qwen2.5-32b-instruct-gptq-int4.json").read_bytes()
    repos = {"Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4": {"config.json": cfg}}
    with fake_hub(repos) as url:
        p = raylm(
            "plan",
            "Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4",
            "--cluster",
            "2x4xL20",
            "--max-model-len",
            "4096",
            "--json",
            env={"HF_ENDPOINT": url, "RAYLM_HOME": str(tmp_path)},
        )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["model"]["origin"] == "Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4"
    assert doc["vllm_command"][2] == "Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4"


def test_store_name_resolves_through_the_model_store(tmp_path: Path) -> None:
    from raylm.models.store import ModelStore

    model = tmp_path / "src" / "tiny"
    model.mkdir(parents=True)
    cfg = json.loads((MODELS / "qwen3-0.6b.json").read_text())
    (model / "config.json").write_text(json.dumps(cfg))
    save_file(
        {"model.embed_tokens.weight": np.zeros((8, 4), np.float16)},
        str(model / "model.safetensors"),
    )
    home = tmp_path / "home"
    store = ModelStore(home / "models")
    store.import_dir(model, "tiny")
    p = raylm("plan", "tiny", "--cluster", "1x1xL20", "--json", env={"RAYLM_HOME": str(home)})
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["model"]["name"] == "tiny" and doc["model"]["weight_bytes"] == 8 * 4 * 2
    assert doc["vllm_command"][2] == str(model.resolve())
