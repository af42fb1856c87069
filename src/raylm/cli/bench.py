"""`raylm bench`: vLLM's serving benchmark against any OpenAI-compatible endpoint, one run,
a concurrency sweep, or two endpoints compared A-B-B-A (raylm.bench)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from raylm.admin_client import DEFAULT_ENDPOINT
from raylm.errors import RaylmError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _concurrencies(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise RaylmError(
            f"--concurrency {text} is not a list of positive whole numbers",
            fix="pass e.g. --concurrency 1,4,16",
        )
    return list(values)


def bench(
    ctx: typer.Context,
    endpoint: str = typer.Option(DEFAULT_ENDPOINT, "--endpoint", help="Base URL, without /v1."),
    compare: tuple[str, str] | None = typer.Option(
        None, "--compare", help="Two base URLs, A and B, run interleaved A-B-B-A.", metavar="A B"
    ),
    rounds: int = typer.Option(4, "--rounds", min=1, help="Rounds of --compare (one A, one B)."),
    api_key: str | None = typer.Option(
        None, "--api-key", help="Bearer key [env: RAYLM_API_KEY].", show_default=False
    ),
    model: str | None = typer.Option(None, "--model", help="Served model (default: the first)."),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="Local directory of the model's tokenizer (default: its root)."
    ),
    num_prompts: int = typer.Option(200, "--num-prompts", min=1, help="Requests per run."),
    input_len: int = typer.Option(256, "--input-len", min=1, help="Prompt tokens per request."),
    output_len: int = typer.Option(64, "--output-len", min=1, help="Output tokens per request."),
    concurrency: str | None = typer.Option(
        None, "--concurrency", help="Requests in flight, or a list to sweep: 1,4,16."
    ),
    request_rate: float = typer.Option(
        float("inf"), "--request-rate", help="Requests per second (default: all at once)."
    ),
    warmups: int = typer.Option(2, "--num-warmups", min=0, help="Warm-up requests per run."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed (every run gets the same prompts)."),
    result_file: Path | None = typer.Option(
        None, "--result-file", "-o", help="Write the vllm-bench JSON here."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write PNG plots into this directory."),
) -> None:
    """Benchmark an endpoint with vLLM's `vllm bench serve` (its datasets and metrics).
    Flags after `--` go to vLLM's benchmark as they are (e.g. -- --dataset-name sharegpt)."""
    from raylm.bench.compare import ratios, schedule
    from raylm.bench.runs import BenchOptions, run_plan
    from raylm.bench.target import resolve

    key = api_key or os.environ.get("RAYLM_API_KEY") or None
    sweep = _concurrencies(concurrency)
    _check(endpoint, compare, request_rate, result_file)
    opts = BenchOptions(
        num_prompts=num_prompts,
        input_len=input_len,
        output_len=output_len,
        request_rate=request_rate,
        seed=seed,
        num_warmups=warmups,
        vllm_args=list(ctx.args),
    )
    if compare:
        pairs = zip(compare, "AB", strict=True)
        targets = [resolve(url, key, model, tokenizer, label) for url, label in pairs]
        order = schedule(rounds)
    else:
        targets = [resolve(endpoint, key, model, tokenizer)]
        order = [""]
    quiet = len(order) * len(sweep) > 1
    total = len(order) * len(sweep)
    done = [0]

    def progress(what: str) -> None:
        done[0] += 1
        err.print(f"[{done[0]}/{total}] {what}", highlight=False)

    runs = run_plan(targets, order, sweep, opts, key, quiet, progress if quiet else lambda _: None)
    report: dict[str, Any] = runs[0] if len(runs) == 1 else {"runs": runs, "order": order}
    if quiet:
        _print_runs(runs)
    if compare:
        found = {c: ratios(*_pairs(runs, c)) for c in sweep}
        report["ratios"] = {str(c): [r.model_dump() for r in rs] for c, rs in found.items()}
        _print_ratios(targets, found, rounds)
    if result_file is not None:
        result_file.write_text(json.dumps(report, indent=1) + "\n")
        out.print(f"wrote {result_file}", highlight=False)
    if plot is not None:
        from raylm.bench.plots import write_plots

        for path in write_plots(runs, plot):
            out.print(f"wrote {path}", highlight=False)


def _check(
    endpoint: str, compare: tuple[str, str] | None, rate: float, result_file: Path | None
) -> None:
    """Refuse what would fail only after every run (the results lost)."""
    if compare and endpoint != DEFAULT_ENDPOINT:
        raise RaylmError(
            "--endpoint and --compare both name endpoints",
            fix="pass one: --endpoint URL for one endpoint, --compare A B for two",
        )
    if not rate > 0:
        raise RaylmError(f"--request-rate {rate:g} is not above 0", fix="pass e.g. 4, or omit it")
    if result_file is not None and not result_file.parent.is_dir():
        raise RaylmError(
            f"Cannot write {result_file}",
            why=f"{result_file.parent} is not a directory",
            fix="create it first, or pass another path to -o",
        )


def _pairs(
    runs: list[dict[str, Any]], c: int | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mine = [r for r in runs if r.get("max_concurrency") == c]
    return [r for r in mine if r["label"] == "A"], [r for r in mine if r["label"] == "B"]


def _print_runs(runs: list[dict[str, Any]]) -> None:
    rows = [("RUN", "CONC", "OK/FAILED", "REQ/S", "OUT TOK/S", "TTFT p50/p99 ms", "TPOT p50/p99")]
    for r in runs:
        rows.append(
            (
                r.get("label") or r["raylm_endpoint"],
                str(r.get("max_concurrency") or "max"),
                f"{r['completed']}/{r['failed']}",
                f"{r['request_throughput']:.2f}",
                f"{r['output_throughput']:.1f}",
                f"{r.get('median_ttft_ms', 0):.1f}/{r.get('p99_ttft_ms', 0):.1f}",
                f"{r.get('median_tpot_ms', 0):.1f}/{r.get('p99_tpot_ms', 0):.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
        out.print(line.rstrip(), highlight=False)


def _print_ratios(targets: list[Any], found: dict[int | None, list[Any]], rounds: int) -> None:
    a, b = targets
    out.print(f"\nB/A over {rounds} round(s), A-B-B-A; A = {a.url}, B = {b.url}", highlight=False)
    for c, rs in found.items():
        out.print(f"concurrency {c if c is not None else 'max'}:", highlight=False)
        for r in rs:
            better = "higher is better" if r.higher_is_better else "lower is better"
            out.print(
                f"  {r.metric:<20} {r.median:6.3f}  [{r.low:.3f}-{r.high:.3f}]  ({better})",
                highlight=False,
            )


def register(app: typer.Typer) -> None:
    app.command(
        "bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(bench)
