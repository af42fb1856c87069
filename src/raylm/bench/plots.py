"""PNG plots of benchmark runs (matplotlib, no display): the TTFT and TPOT distributions
of each endpoint, and output throughput against concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt


def _name(run: dict[str, Any]) -> str:
    label = run.get("label") or ""
    return f"{label}: {run.get('raylm_endpoint', '')}" if label else str(run["raylm_endpoint"])


def _ttfts_ms(run: dict[str, Any]) -> list[float]:
    errors = run.get("errors") or [""] * len(run["ttfts"])
    return [t * 1000 for t, e in zip(run["ttfts"], errors, strict=True) if not e]


def _tpots_ms(run: dict[str, Any]) -> list[float]:
    """Per request, its time per output token after the first (as vLLM defines TPOT)."""
    out = []
    for lat, ttft, n in zip(run["latencies"], run["ttfts"], run["output_lens"], strict=True):
        if n > 1 and lat > 0:
            out.append((lat - ttft) / (n - 1) * 1000)
    return out


def write_plots(runs: list[dict[str, Any]], directory: Path) -> list[Path]:
    """ttft.png, tpot.png and (with more than one concurrency) throughput.png in
    `directory`; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_endpoint.setdefault(_name(run), []).append(run)
    written = []
    for metric, unit, values in (
        ("ttft", "TTFT (ms)", _ttfts_ms),
        ("tpot", "TPOT (ms)", _tpots_ms),
    ):
        # One cumulative curve per endpoint and concurrency: curves overlay where
        # histograms would hide each other.
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, mine in by_endpoint.items():
            for c in sorted({r.get("max_concurrency") or 0 for r in mine}):
                data = sorted(
                    v for r in mine if (r.get("max_concurrency") or 0) == c for v in values(r)
                )
                if data:
                    ys = [(i + 1) / len(data) for i in range(len(data))]
                    ax.step(data, ys, where="post", label=f"{name}, concurrency {c or 'max'}")
        ax.set_xlabel(unit)
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{metric.upper()} distribution (cumulative)")
        ax.legend(fontsize=7)
        written.append(_save(fig, directory / f"{metric}.png"))
    concurrencies = {r.get("max_concurrency") for r in runs}
    if len(concurrencies) > 1 and None not in concurrencies:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, mine in by_endpoint.items():
            points: dict[int, list[float]] = {}
            for r in mine:
                points.setdefault(int(r["max_concurrency"]), []).append(r["output_throughput"])
            xs = sorted(points)
            ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("output tokens/s")
        ax.set_title("Output throughput against concurrency")
        ax.legend(fontsize=8)
        written.append(_save(fig, directory / "throughput.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
