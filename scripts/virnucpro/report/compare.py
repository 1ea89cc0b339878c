"""`compare_to`: each figure of this run's summary.json against a previous one, marked significant or not.

A figure measured in repeated windows on both sides (a sweep point's sequences/s) is compared as the sweep
compares points: the ratio of geometric means with Welch's interval plus the between-job allowance
(`between_job_cv`; the two runs are different jobs, and the windows of one job cannot show drift between jobs),
all such figures covered together (Bonferroni); significant when the interval excludes 1. A figure with only an
interval on each side (the best speedup, whose intervals already carry the allowance) is significant when the
intervals do not overlap. Anything else says "no interval" (the change may be noise).
"""

from __future__ import annotations

from typing import Any

from virnucpro.report.significance import ALPHA, job_variance
from virnucpro.report.stats import all_rates, ratio_ci


def _figure(value, unit: str, higher_is_better: bool | None, ci95=None, repeats=None) -> dict[str, Any] | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    ok_ci = isinstance(ci95, (list, tuple)) and len(ci95) == 2 and all(isinstance(x, (int, float)) for x in ci95)
    return {
        "value": float(value),
        "unit": unit,
        "higher_is_better": higher_is_better,
        "ci95": [float(ci95[0]), float(ci95[1])] if ok_ci else None,
        "repeats": repeats if isinstance(repeats, list) and all_rates(repeats) else None,
    }


def figures(summary: dict) -> dict[str, dict]:
    """{stable figure name: {value, unit, higher_is_better, ci95}} of the figures users act on."""
    out: dict[str, dict | None] = {}
    for r in summary.get("production") or []:
        steady, proj = r.get("steady") or {}, r.get("projection") or {}
        out[f"{r['label']}: steady tokens/s"] = _figure(
            steady.get("avg_tokens_per_sec"), "tokens/s", True, r.get("ci95_tokens_per_sec")
        )
        out[f"{r['label']}: steady sequences/s"] = _figure(
            steady.get("avg_sequences_per_sec"), "sequences/s", True, r.get("ci95")
        )
        out[f"{r['label']}: loop hours at target"] = _figure(proj.get("loop_hours"), "h", False)
        out[f"{r['label']}: job hours at target"] = _figure(proj.get("job_hours"), "h", False)
    for r in summary.get("sweep_points") or []:
        out[f"{r['label']}: sequences/s"] = _figure(
            r.get("sequences_per_sec"), "sequences/s", True, r.get("ci95"), r.get("repeats")
        )
    for r in summary.get("precision") or []:  # a precision sweep: its accuracy beside its speed (in sweep_points)
        out[f"precision {r['precision']}: cosine p01"] = _figure(r.get("cosine_p01"), "", True)
        out[f"precision {r['precision']}: relative L2 median"] = _figure(r.get("rel_l2_median"), "", False)
    best = summary.get("best") or {}
    out["best: speedup over baseline"] = _figure(best.get("speedup_over_baseline"), "x", True, best.get("speedup_ci95"))
    for name, ratio in ((summary.get("peers") or {}).get("ratios") or {}).items():
        out[f"peers: {name}"] = _figure(ratio, "x", True)
    for v in summary.get("verdicts") or []:
        out.setdefault(
            f"verdict {v['id']} {v['scope']}: {v['title']}", _figure(v.get("value"), v.get("unit", ""), None)
        )
    return {k: v for k, v in out.items() if v is not None}


def _repeated(a: dict, b: dict) -> bool:
    return bool(a.get("repeats") and b.get("repeats") and len(a["repeats"]) >= 2 and len(b["repeats"]) >= 2)


def significance(now: dict, before: dict, level: float = 0.95, known_var: float = 0.0) -> tuple[bool | None, str]:
    if _repeated(now, before):
        r = ratio_ci(now["repeats"], before["repeats"], level, known_var)
        apart = not r["low"] <= 1.0 <= r["high"]
        return apart, f"{r['ratio']:.3f}x [{r['low']:.3f}, {r['high']:.3f}] with the between-job allowance"
    if now["ci95"] is None or before["ci95"] is None:
        return None, "no interval"
    apart = now["ci95"][0] > before["ci95"][1] or now["ci95"][1] < before["ci95"][0]
    return apart, "95 % intervals apart" if apart else "95 % intervals overlap"


def compare(current: dict, previous: dict, previous_path: str, between_job_cv: float = 0.0) -> dict[str, Any]:
    """Rows for every figure both summaries have; figures only one side has are listed by name."""
    now, before = figures(current), figures(previous)
    shared = [n for n in now if n in before]
    level = 1.0 - ALPHA / max(1, sum(_repeated(now[n], before[n]) for n in shared))
    rows = []
    for name in shared:
        a, b = now[name], before[name]
        sig, note = significance(a, b, level, job_variance(between_job_cv))
        change = (a["value"] - b["value"]) / abs(b["value"]) * 100 if b["value"] else None
        better = (
            None if not sig or a["higher_is_better"] is None else (a["value"] > b["value"]) == a["higher_is_better"]
        )
        rows.append(
            {
                "figure": name,
                "previous": b["value"],
                "current": a["value"],
                "unit": a["unit"],
                "change_pct": change,
                "significant": sig,
                "better": better,
                "note": note,
                "previous_ci95": b["ci95"],
                "current_ci95": a["ci95"],
            }
        )
    return {
        "previous": previous_path,
        "between_job_cv": between_job_cv,
        "previous_generated": previous.get("generated"),
        "previous_commit": previous.get("git_commit"),
        "rows": rows,
        "only_now": sorted(set(now) - set(before)),
        "only_before": sorted(set(before) - set(now)),
    }
