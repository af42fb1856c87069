"""One GPU machine as a user meets it: `raylm serve` with no cluster (planned from the
live GPUs, a replica killed and replaced, the plan's KV cache against vLLM's), then
`raylm up`, `status`, `doctor`, `doctor --nccl`, and a GPU another process partly holds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from raylm.cluster.ports import free_port
from tests.gpu.harness import (
    gpu_env,
    raylm,
    replica_launches,
    require_gpus,
    start_serve,
)

PLAN = re.compile(
    r"plan: (\d+) replica\(s\) x TP=(\d+) PP=(\d+), max_model_len (\d+), (\d+) KV-cache tokens"
)


def _import(env: dict[str, str], model: Path) -> None:
    p = raylm(env, "model", "import", str(model), "--name", "tiny")
    assert p.returncode == 0, p.stderr


def test_serve_with_no_cluster_plans_replaces_and_calibrates(
    tiny_model: Path, machine: dict[str, str], tmp_path: Path
) -> None:
    require_gpus(2)
    _import(machine, tiny_model)
    s = start_serve(
        machine, tmp_path / "serve.log", free_port(), "tiny", "--engine-arg", "enforce-eager"
    )
    try:
        text = s.text()
        assert "planning the layout from the live GPU inventory" in text, text[-3000:]
        m = PLAN.search(text)
        assert m, text[-3000:]
        replicas, tp, kv_planned = int(m[1]), int(m[2]), int(m[5])
        assert (replicas, tp) == (2, 1), m[0]
        reps = s.root()["replicas"]
        assert len(reps) == 2 and {r["state"] for r in reps} == {"ready"}
        assert s.complete() == 200
        # The planner's KV-cache tokens against what vLLM allocated when it loaded.
        logs = sorted((Path(machine["HOME"]) / ".raylm" / "logs" / "default").glob("*.log"))
        sizes = [
            int(x.replace(",", ""))
            for f in logs
            for x in re.findall(
                r"GPU KV cache size: ([\d,]+) tokens", f.read_text(errors="replace")
            )
        ]
        assert sizes, [f.name for f in logs]
        for actual in sizes:
            assert abs(kv_planned - actual) / actual <= 0.05, (kv_planned, actual)
        print(f"KV cache tokens: planned {kv_planned}, vLLM {sizes}")
        # One replica's vLLM dies: it is replaced while the other keeps answering.
        victim = replica_launches(Path(machine["HOME"]))[0]
        os.killpg(victim.pid, signal.SIGKILL)  # the launcher leads its process group
        statuses = []
        deadline = time.monotonic() + 300
        while True:
            statuses.append(s.complete())
            reps = s.root()["replicas"]
            if sum(r["restarts"] for r in reps) >= 1 and {r["state"] for r in reps} == {"ready"}:
                break
            assert time.monotonic() < deadline, reps
            time.sleep(0.5)
        assert statuses and set(statuses) == {200}, statuses
    finally:
        assert s.stop() == 0


def test_up_status_doctor_and_nccl(machine: dict[str, str]) -> None:
    require_gpus(2)
    up = raylm(machine, "up", "--json")
    assert up.returncode == 0, up.stderr
    st = raylm(machine, "status", "--json")
    assert st.returncode == 0, st.stderr
    (node,) = json.loads(st.stdout)["nodes"]
    assert len(node["gpus"]) >= 2 and node["ray_gpus"] >= 2
    for g in node["gpus"]:
        assert g["memory_total_bytes"] > 16 << 30 and g["compute_capability"] >= "7.0", g
    dr = raylm(machine, "doctor", "--json")
    rep = json.loads(dr.stdout)
    assert dr.returncode == 0, [c for c in rep["checks"] if c["status"] == "FAIL"]
    nc = raylm(machine, "doctor", "--nccl", "--json", timeout=900)
    rep = json.loads(nc.stdout)
    intra = [c for c in rep["checks"] if c["check"] == "nccl-intra"]
    assert nc.returncode == 0 and [c["status"] for c in intra] == ["PASS"], intra
    assert "GB/s via" in intra[0]["finding"]
    (result,) = [r for r in rep["nccl"] if r["scope"] == "intra"]
    assert result["busbw_gbps"] > 1 and result["transports"], result
    print("doctor --nccl:", intra[0]["finding"])


HOG = """
import sys, time, torch
held = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda:0")
print("holding", flush=True)
time.sleep(3600)
"""


def test_a_gpu_partly_held_by_another_process(
    tiny_model: Path, machine: dict[str, str], tmp_path: Path
) -> None:
    require_gpus(2)
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(int(total * 0.85))],
        env=gpu_env(tmp_path / "hog"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "holding"
        assert raylm(machine, "up").returncode == 0
        _import(machine, tiny_model)
        rep = json.loads(raylm(machine, "doctor", "--json").stdout)
        held = [c for c in rep["checks"] if c["check"] == "gpu-memory" and c["status"] == "WARN"]
        assert held and f"pid {hog.pid}" in held[0]["finding"], rep["checks"]
        assert held[0]["finding"].startswith("GPU0")
        # ... and says whether the model's planned layout still fits.
        rep = json.loads(raylm(machine, "doctor", "--model", "tiny", "--json").stdout)
        (fit,) = [c for c in rep["checks"] if c["check"] == "model-fit"]
        assert fit["status"] == "WARN" and "other processes hold" in fit["finding"], fit
        plan = raylm(machine, "plan", "tiny", "--cluster", "live", "--json")
        doc = json.loads(plan.stdout)
        assert doc["plan"]["gpu_memory_utilization"] < 0.15, doc["plan"]
        assert any("free" in w for w in doc["plan"]["warnings"])
        # A share the user pins is refused before anything loads, with the numbers.
        pinned = raylm(
            machine,
            "serve",
            "tiny",
            "--port",
            str(free_port()),
            "--engine-arg",
            "gpu-memory-utilization=0.9",
        )
        assert pinned.returncode == 1 and "free" in pinned.stderr, pinned.stderr[-2000:]
        assert "GiB" in pinned.stderr and "Traceback" not in pinned.stderr
        # Otherwise serve plans around the memory held and works.
        s = start_serve(
            machine, tmp_path / "serve.log", free_port(), "tiny", "--engine-arg", "enforce-eager"
        )
        try:
            assert (
                "gpu_memory_utilization 0.1" in s.text() or "gpu_memory_utilization 0.0" in s.text()
            )
            assert s.complete() == 200
        finally:
            assert s.stop() == 0
    finally:
        hog.kill()
        hog.wait(30)
