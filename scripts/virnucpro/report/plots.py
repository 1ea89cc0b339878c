"""Plots for the report as inline SVG strings (matplotlib, no files, no CDN: readable offline)."""

from __future__ import annotations

import io
import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "figure.dpi": 96})


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG is embedded in HTML


def throughput_over_time(run: dict, warmup_seconds: float, warmup_batches: int) -> str | None:
    """Tokens/s of each batch against time since the rank's first batch, one line per rank, warm-up shaded."""
    ranks = [r for r in run.get("ranks", []) if r.get("series")]
    if not ranks:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.8))
    shade_end = 0.0
    for rank in ranks:
        series = rank["series"]
        start = series[0]["t"] - (series[0].get("batch_seconds") or 0.0)
        xs = [b["t"] - start for b in series]
        ys = [(b["tokens_per_sec"] or 0) / 1000 for b in series]
        ax.plot(xs, ys, lw=1, label=f"rank {rank['rank']} ({rank.get('device')})")
        steady = rank.get("steady") or {}
        if steady.get("warmup_excluded"):
            k = steady["excluded_batches"]
            shade_end = max(shade_end, xs[k - 1])
    if shade_end:
        ax.axvspan(
            0, shade_end, color="0.85", label=f"warm-up excluded ({warmup_seconds:g} s / {warmup_batches} batches)"
        )
    ax.set_xlabel("seconds since the first batch")
    ax.set_ylabel("k tokens/s per batch")
    ax.set_title(run["label"])
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _svg(fig)


def scaling(points: list[tuple[int, float]]) -> str | None:
    """Measured speedup against ranks, with the ideal line."""
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(4, 3))
    ns = [n for n, _ in points]
    ax.plot(ns, ns, "--", color="0.5", label="ideal")
    ax.plot(ns, [s for _, s in points], "o-", label="measured")
    ax.set_xlabel("ranks (GPUs)")
    ax.set_ylabel("speedup over 1 rank")
    ax.set_xticks(ns)
    ax.legend()
    ax.grid(alpha=0.3)
    return _svg(fig)


def heatmap(rows: list, cols: list, cells: dict, row_label: str, col_label: str, title: str, fmt: str) -> str | None:
    """`cells[(row, col)]` is a number, or a string such as 'OOM' / 'FAILED' for a point that did not finish."""
    if not rows or not cols:
        return None
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 0.9 + 0.55 * len(rows)))
    values = [[cells.get((r, c)) for c in cols] for r in rows]
    numbers = [v for row in values for v in row if isinstance(v, (int, float))]
    lo, hi = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    grid = [[v if isinstance(v, (int, float)) else math.nan for v in row] for row in values]
    im = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if isinstance(v, (int, float)):
                ax.text(j, i, format(v, fmt), ha="center", va="center", color="white" if v < (lo + hi) / 2 else "black")
            else:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="crimson"))
                ax.text(j, i, v or "missing", ha="center", va="center", color="crimson", fontweight="bold")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _svg(fig)


def gpu_model(model: dict, projections: list[dict], max_hours: float | None) -> str | None:
    """The scaling model's job hours at the target against total GPUs (one line per GPUs-per-job), labelled as a
    model, with each production run's own projection (from its measured phases) overlaid."""
    grid = model.get("grid") or []
    if not grid:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for k in sorted({g["gpus_per_job"] for g in grid}):
        pts = sorted((g["gpus"], g["job_hours"]) for g in grid if g["gpus_per_job"] == k)
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], "--", marker=".", lw=1, label=f"model: {k} GPU(s)/job x 1-8 jobs"
        )
    measured = [
        (p["world_size"], p["projection"]["job_hours"])
        for p in projections
        if (p.get("projection") or {}).get("job_hours") is not None
    ]
    if measured:
        ax.plot([m[0] for m in measured], [m[1] for m in measured], "kX", ms=8, label="projected from a measured run")
    if max_hours:
        ax.axhline(max_hours, color="crimson", lw=1, label=f"{max_hours:g} h target")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_yscale("log")
    ax.set_xlabel("GPUs in total")
    ax.set_ylabel("job hours at the target")
    ax.set_title("MODEL (not measured): whole-job time", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    return _svg(fig)
