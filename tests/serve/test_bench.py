"""`raylm bench` as the README runs it: vLLM's benchmark against the shared `raylm serve`,
its vllm-bench JSON, an A-B-B-A comparison with ratios, PNG plots, and clear errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from raylm.testing.machine import machine_base_env
from tests.conftest import RAYLM, Served

_SMALL = ["--num-prompts", "4", "--input-len", "16", "--output-len", "8", "--num-warmups", "1"]


def _bench(served: Served, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**machine_base_env(), "RAYLM_API_KEY": key or served.api_key}
    return subprocess.run(
        [RAYLM, "bench", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_bench_writes_vllm_bench_json_and_plots(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    r = _bench(
        served,
        "--endpoint",
        served.base_url,
        *_SMALL,
        "--concurrency",
        "2",
        "-o",
        str(out),
        "--plot",
        str(tmp_path / "plots"),
    )
    assert r.returncode == 0, r.stderr
    assert "Serving Benchmark Result" in r.stdout  # vLLM's own report
    result = json.loads(out.read_text())
    # The fields `vllm bench serve --save-result --save-detailed` writes.
    assert result["backend"] == "openai" and result["model_id"] == served.model
    assert result["completed"] == 4 and result["failed"] == 0 and result["max_concurrency"] == 2
    assert result["total_output_tokens"] == 4 * 8 and len(result["ttfts"]) == 4
    assert 0 < result["median_ttft_ms"] <= result["p99_ttft_ms"] and result["median_tpot_ms"] > 0
    for name in ("ttft.png", "tpot.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert served.api_key not in r.stdout + r.stderr + out.read_text()


def test_compare_runs_a_b_b_a_and_prints_ratios(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    url = served.base_url
    r = _bench(
        served,
        "--compare",
        url,
        f"{url}/v1",
        "--rounds",
        "2",
        *_SMALL,
        "--concurrency",
        "1,2",
        "-o",
        str(out),
        "--plot",
        str(tmp_path / "plots"),
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["order"] == ["A", "B", "B", "A"]
    labels = [(run["label"], run["max_concurrency"]) for run in report["runs"]]
    assert labels == [(x, c) for c in (1, 2) for x in "ABBA"]
    assert all(run["completed"] == 4 for run in report["runs"])
    ratio = {x["metric"]: x for x in report["ratios"]["2"]}["request_throughput"]
    assert ratio["rounds"] == 2 and ratio["low"] <= ratio["median"] <= ratio["high"]
    assert "B/A over 2 round(s), A-B-B-A" in r.stdout and "request_throughput" in r.stdout
    assert (tmp_path / "plots" / "throughput.png").exists()


def test_bench_errors_say_what_failed_and_what_to_do(served: Served) -> None:
    wrong = _bench(served, "--endpoint", served.base_url, *_SMALL, key="sk-wrong")
    assert wrong.returncode == 1 and "refused the benchmark's key (401)" in wrong.stderr
    gone = _bench(served, "--endpoint", "http://127.0.0.1:9", *_SMALL)
    assert gone.returncode == 1 and "Cannot reach http://127.0.0.1:9" in gone.stderr
    model = _bench(served, "--endpoint", served.base_url, "--model", "nope", *_SMALL)
    assert model.returncode == 1 and f"its /v1/models lists {served.model}" in model.stderr
    sweep = _bench(served, "--endpoint", served.base_url, "--concurrency", "0,x")
    assert sweep.returncode == 1 and "--concurrency 0,x" in sweep.stderr
    rate = _bench(served, "--endpoint", served.base_url, "--request-rate", "0")
    assert rate.returncode == 1 and "--request-rate 0 is not above 0" in rate.stderr
    nowhere = _bench(served, "--endpoint", served.base_url, "-o", "/no/such/dir/r.json")
    assert nowhere.returncode == 1 and "/no/such/dir is not a directory" in nowhere.stderr
    both = _bench(served, "--endpoint", served.base_url, "--compare", "http://a", "http://b")
    assert both.returncode == 1 and "--endpoint and --compare both name" in both.stderr
    for r in (wrong, gone, model, sweep, rate, nowhere, both):
        assert "Traceback" not in r.stderr
