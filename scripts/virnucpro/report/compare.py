"""`compare_to`: each figure of this run's summary.json against a previous one, marked significant or not.

A change is significant only when both runs have a 95 % interval for the figure and the intervals do not
overlap; a figure without an interval on either side says "no interval" (the change may be noise).
"""

from __future__ import annotations

from typing import Any


def _figure(value, unit: str, higher_is_better: bool | None, ci95=None) -> dict[str, Any] | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    ok_ci = isinstance(ci95, (list, tuple)) and len(ci95) == 2 and all(isinstance(x, (int, float)) for x in ci95)
    return {
        "value": float(value),
        "unit": unit,
        "higher_is_better": higher_is_better,
        "ci95": [float(ci95[0]), float(ci95[1])] if ok_ci else None,
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
        out[f"{r['label']}: sequences/s"] = _figure(r.get("sequences_per_sec"), "sequences/s", True, r.get("ci95"))
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


def significance(now: dict, before: dict) -> tuple[bool | None, str]:
    if now["ci95"] is None or before["ci95"] is None:
        return None, "no interval"
    apart = now["ci95"][0] > before["ci95"][1] or now["ci95"][1] < before["ci95"][0]
    return apart, "95 % intervals apart" if apart else "95 % intervals overlap"


def compare(current: dict, previous: dict, previous_path: str) -> dict[str, Any]:
    """Rows for every figure both summaries have; figures only one side has are listed by name."""
    now, before = figures(current), figures(previous)
    rows = []
    for name in (n for n in now if n in before):
        a, b = now[name], before[name]
        sig, note = significance(a, b)
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
        "previous_generated": previous.get("generated"),
        "previous_commit": previous.get("git_commit"),
        "rows": rows,
        "only_now": sorted(set(now) - set(before)),
        "only_before": sorted(set(before) - set(now)),
    }
