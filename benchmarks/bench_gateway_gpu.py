"""What the gateway costs on a GPU: `raylm serve` of one replica, measured through the
gateway (B) and at the same replica directly (A), with vLLM's own `vllm bench serve`
(its random dataset and metrics, run in this process) as the client.

Rounds are interleaved A-B-B-A so drift hits both sides alike; each round runs concurrency
1, 16 and saturation. Reported per concurrency: TTFT p50 and p99 difference (B - A), TPOT
p50 difference, and the output-throughput ratio B/A, each as the median over rounds with
its spread (min..max).

    python benchmarks/bench_gateway_gpu.py --model DIR [--rounds 3] [--out results.json]

Targets (issue 10): TTFT p50 +1 ms or less at concurrency 16; throughput loss 2 % or less at
saturation. docs/gpu-testing.md records the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.gpu.harness import replica_launches

from raylm.cluster.ports import free_port
from raylm.testing.machine import raylm_argv
from raylm.testing.process import stop_serve

LEVELS = {"c1": (1, 16), "c16": (16, 128), "saturation": (256, 512)}
"""name -> (max concurrency, prompts); each prompt is 256 random tokens in, 64 out."""


@contextlib.contextmanager
def _serve(model: str, port: int, home: Path) -> Iterator[tuple[str, str, str]]:
    """raylm serve of one replica; yields (gateway URL, replica URL, replica key)."""
    env = {**os.environ, "HOME": str(home)}
    log = home / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            raylm_argv("serve", model, "--replicas", "1", "--port", str(port),
                       "--engine-arg", "enforce-eager"),
            env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while "raylm is ready" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"raylm serve did not get ready:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        (launch,) = replica_launches(home)
        yield f"http://127.0.0.1:{port}", launch.url, launch.key()
    finally:
        stop_serve(proc, 120)


def _bench(
    base_url: str, key: str, model_dir: str, served: str, conc: int, n: int
) -> dict[str, Any]:
    """One `vllm bench serve` run (random 256 in / 64 out); its result dict."""
    from raylm.compat import hide_broken_torch_extensions

    hide_broken_torch_extensions()
    from vllm.benchmarks.serve import add_cli_args, main

    try:  # where it lives moved between vLLM releases
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", "vllm", "--base-url", base_url, "--endpoint", "/v1/completions",
            "--model", served, "--tokenizer", model_dir, "--dataset-name", "random",
            "--random-input-len", "256", "--random-output-len", "64", "--ignore-eos",
            "--num-prompts", str(n), "--max-concurrency", str(conc), "--seed", "0",
            "--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99",
            "--disable-tqdm",
        ]
    )  # fmt: skip
    os.environ["OPENAI_API_KEY"] = key  # vLLM's client sends it as the bearer token
    with contextlib.redirect_stdout(io.StringIO()):
        result: dict[str, Any] = main(args)
    return result


def _pick(r: dict[str, Any]) -> dict[str, float]:
    return {
        "ttft_p50_ms": float(r["p50_ttft_ms"]),
        "ttft_p99_ms": float(r["p99_ttft_ms"]),
        "tpot_p50_ms": float(r["p50_tpot_ms"]),
        "throughput": float(r["output_throughput"]),
        "completed": float(r["completed"]),
    }


def _spread(xs: list[float], fmt: str) -> str:
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}..{max(xs):{fmt}})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="Model directory (HF format).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--quick", action="store_true", help="A few prompts per run: checks the script (CPU)."
    )
    ap.add_argument(
        "--levels", nargs="+", choices=sorted(LEVELS), default=list(LEVELS),
        help="Which concurrency levels to run (default: all).",
    )  # fmt: skip
    a = ap.parse_args()
    chosen = {k: LEVELS[k] for k in a.levels}
    levels = {k: (c, max(2, n // 64)) for k, (c, n) in chosen.items()} if a.quick else chosen
    home = Path(tempfile.mkdtemp(prefix="raylm-bench-gpu-"))
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        level: {"direct": [], "gateway": []} for level in levels
    }
    with _serve(a.model, free_port(), home) as (gateway, replica, key):
        with urllib.request.urlopen(f"{gateway}/v1/models", timeout=30) as r:
            served = json.loads(r.read())["data"][0]["id"]
        for level, (conc, n) in levels.items():
            _bench(gateway, "", a.model, served, conc, min(n, 64))  # warm-up, not counted
            for rnd in range(a.rounds):
                for side in ("direct", "gateway", "gateway", "direct"):
                    url, k = (replica, key) if side == "direct" else (gateway, "")
                    r = _pick(_bench(url, k, a.model, served, conc, n))
                    runs[level][side].append(r)
                    print(f"{level} round {rnd} {side}: {r}", flush=True)
                    if a.out:  # what a run cut short by a time limit still leaves
                        a.out.with_suffix(".runs.json").write_text(json.dumps(runs, indent=2))
    summary: dict[str, Any] = {}
    heads = ("TTFT p50 +ms", "TTFT p99 +ms", "TPOT p50 +ms", "throughput B/A")
    print(f"\n{'level':<11} " + " ".join(f"{h:>22}" for h in heads))
    for level, sides in runs.items():
        d, g = sides["direct"], sides["gateway"]
        # Pair each round's two gateway runs with its two direct runs (A-B-B-A).
        diffs = {
            k: [gi[k] - di[k] for gi, di in zip(g, d, strict=True)]
            for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms")
        }
        ratio = [gi["throughput"] / di["throughput"] for gi, di in zip(g, d, strict=True)]
        summary[level] = {**diffs, "throughput_ratio": ratio, "direct": d, "gateway": g}
        cells = (
            _spread(diffs["ttft_p50_ms"], "+.2f"),
            _spread(diffs["ttft_p99_ms"], "+.2f"),
            _spread(diffs["tpot_p50_ms"], "+.3f"),
            _spread(ratio, ".4f"),
        )
        print(f"{level:<11} " + " ".join(f"{c:>22}" for c in cells))
    if a.out:
        a.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
