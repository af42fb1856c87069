"""Layouts over both GPUs of one machine: the plan `raylm plan --cluster live` prints is the
one `raylm serve` runs, vLLM's Ray executor with PP=2, and TP=2 over NCCL."""

from __future__ import annotations

import json
import re
from pathlib import Path

from raylm.cluster.ports import free_port
from tests.gpu.harness import raylm, replica_launches, require_gpus, start_serve


def test_plan_live_is_what_serve_runs(
    tiny_model: Path, machine: dict[str, str], tmp_path: Path
) -> None:
    require_gpus(2)
    assert raylm(machine, "up").returncode == 0
    assert raylm(machine, "model", "import", str(tiny_model), "--name", "tiny").returncode == 0
    p = raylm(machine, "plan", "tiny", "--cluster", "live", "--enforce-eager", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    s = start_serve(
        machine, tmp_path / "serve.log", free_port(), "tiny", "--engine-arg", "enforce-eager"
    )
    try:
        lay = doc["plan"]
        tp, pp = lay["tensor_parallel_size"], lay["pipeline_parallel_size"]
        words = f"plan: {lay['replicas']} replica(s) x TP={tp} PP={pp}"
        assert words in s.text(), s.text()[-3000:]
        # Each replica runs the very line the plan printed, plus its address.
        launches = replica_launches(Path(machine["HOME"]))
        assert len(launches) == lay["replicas"]
        for launch in launches:
            argv = launch.argv[launch.argv.index("raylm.serve.launcher") + 1 :]
            for flag in ("--host", "--port"):
                i = argv.index(flag)
                del argv[i : i + 2]
            assert ["vllm", *argv] == doc["vllm_command"], (argv, doc["vllm_command"])
    finally:
        assert s.stop() == 0


def test_ray_executor_with_pp2(tiny_model: Path, machine: dict[str, str], tmp_path: Path) -> None:
    require_gpus(2)
    assert raylm(machine, "model", "import", str(tiny_model), "--name", "tiny").returncode == 0
    spec = tmp_path / "raylm.toml"
    spec.write_text('executor = "ray"\n[engine_args]\nenforce-eager = true\n')
    s = start_serve(
        machine, tmp_path / "serve.log", free_port(), "tiny", "--pp", "2", "-f", str(spec)
    )
    try:
        assert "TP=1 PP=2" in s.text()
        assert s.complete() == 200
        logs = list((Path(machine["HOME"]) / ".raylm" / "logs" / "default").glob("*.log"))
        text = "".join(f.read_text(errors="replace") for f in logs)
        assert re.search(r"distributed[_-]executor[_-]backend.{0,4}ray", text), text[-2000:]
    finally:
        assert s.stop() == 0


def test_tp2_over_nccl(tiny_model: Path, machine: dict[str, str], tmp_path: Path) -> None:
    require_gpus(2)
    assert raylm(machine, "model", "import", str(tiny_model), "--name", "tiny").returncode == 0
    s = start_serve(
        machine,
        tmp_path / "serve.log",
        free_port(),
        "tiny",
        "--tp",
        "2",
        "--engine-arg",
        "enforce-eager",
    )
    try:
        assert "TP=2 PP=1" in s.text()
        assert s.complete() == 200
        (launch,) = replica_launches(Path(machine["HOME"]))
        assert launch.flag("--tensor-parallel-size") == "2"
    finally:
        assert s.stop() == 0
