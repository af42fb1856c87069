"""Benchmark runs: vLLM's `vllm bench serve` (its datasets, request functions and metrics)
called in this process, once per endpoint, concurrency and round.

Every run of one invocation uses the same seed, so each endpoint gets the same prompts.
The key goes to vLLM's request functions the way `vllm bench serve` takes it, through
OPENAI_API_KEY, set for the run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raylm.bench.target import Target
from raylm.compat import hide_broken_torch_extensions
from raylm.errors import RaylmError


class BenchOptions(BaseModel):
    """What every run of one `raylm bench` shares."""

    model_config = ConfigDict(extra="forbid")

    num_prompts: int = Field(ge=1, description="Requests per run.")
    input_len: int = Field(ge=1, description="Prompt tokens of each random-dataset request.")
    output_len: int = Field(ge=1, description="Tokens each request generates.")
    request_rate: float = Field(gt=0, description="Requests sent per second (inf: all at once).")
    seed: int = Field(description="The dataset's seed: each run gets the same prompts.")
    num_warmups: int = Field(ge=0, description="Requests sent before each run's clock starts.")
    vllm_args: list[str] = Field(
        default_factory=list,
        description="More `vllm bench serve` flags, passed as they are (e.g. --dataset-name).",
    )


def _vllm_bench() -> Any:
    """vLLM's `vllm bench serve` module, or a clear error without it."""
    hide_broken_torch_extensions()  # before vLLM imports transformers
    # The benchmark runs no kernel: without Triton vLLM's import is faster, and Triton's
    # bindings print pages of leak warnings at exit.
    sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
    try:
        from vllm.benchmarks import serve
        from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: F401
    except ImportError as e:
        raise RaylmError(
            "raylm bench needs vLLM's benchmark code",
            why=f"it does not import here: {e}",
            fix="install raylm with vLLM: pip install 'raylm[cpu]' (or [gpu])",
        ) from e
    return serve


def _namespace(target: Target, opts: BenchOptions, concurrency: int | None) -> argparse.Namespace:
    """vLLM's own argument namespace for one run (its parser, its defaults)."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    add_cli_args = _vllm_bench().add_cli_args

    parser = FlexibleArgumentParser(prog="raylm bench")
    add_cli_args(parser)
    argv = [
        *("--base-url", target.url, "--model", target.model),
        *("--served-model-name", target.model, "--tokenizer", target.tokenizer),
        *("--num-prompts", str(opts.num_prompts), "--seed", str(opts.seed)),
        *("--input-len", str(opts.input_len), "--output-len", str(opts.output_len)),
        *("--request-rate", str(opts.request_rate), "--num-warmups", str(opts.num_warmups)),
        *("--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"),
        "--save-detailed",  # per-request figures: what the plots are drawn from
        *opts.vllm_args,
    ]
    if concurrency is not None:
        argv += ["--max-concurrency", str(concurrency)]
    if target.label:
        argv += ["--label", target.label]
    try:
        ns: argparse.Namespace = parser.parse_args(argv)
        return ns
    except SystemExit as e:  # argparse printed its usage line already
        raise RaylmError(
            "vLLM's benchmark refused its arguments",
            why=f"argparse exited with {e.code} (see the line above)",
            fix="check the flags after --",
        ) from e


@contextlib.contextmanager
def _api_key(key: str | None) -> Iterator[None]:
    before = os.environ.get("OPENAI_API_KEY")
    if key:
        os.environ["OPENAI_API_KEY"] = key
    else:
        os.environ.pop("OPENAI_API_KEY", None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = before


def run_one(
    target: Target,
    opts: BenchOptions,
    concurrency: int | None,
    api_key: str | None,
    quiet: bool,
) -> dict[str, Any]:
    """One run: vLLM's benchmark against `target`; its vllm-bench result (detailed).
    `quiet` hides vLLM's own printing and progress bar (the caller shows its own)."""
    main_async = _vllm_bench().main_async
    args = _namespace(target, opts, concurrency)
    args.disable_tqdm = quiet
    sink = io.StringIO()
    printing = contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext()
    try:
        with _api_key(api_key), printing:
            result: dict[str, Any] = asyncio.run(main_async(args))
    except (ValueError, RuntimeError, OSError) as e:
        # The first request failing stops vLLM's benchmark (ValueError, with the reason).
        raise RaylmError(
            f"The benchmark against {target.url} failed",
            why=str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__,
            fix="check that a plain request works with the same key and model",
            command=f"curl {target.url}/v1/models",
        ) from e
    result["raylm_endpoint"] = target.url
    return result


def run_plan(
    targets: list[Target],
    order: list[str],
    concurrencies: list[int | None],
    opts: BenchOptions,
    api_key: str | None,
    quiet: bool,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Every run, in order: for each concurrency, the endpoints in `order` (labels)."""
    by_label = {t.label: t for t in targets}
    results = []
    for c in concurrencies:
        for label in order:
            t = by_label[label]
            progress(f"{t.label or t.url} at concurrency {c if c is not None else 'max'}")
            results.append(run_one(t, opts, c, api_key, quiet))
    return results
