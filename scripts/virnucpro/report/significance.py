"""Which sweep point beats the baseline beyond noise, and whether its validation agrees.

Each point's speedup over the baseline is the ratio of geometric means of their per-window sequences/s, with
Welch's t interval on the logs (`stats.ratio_ci`). The windows of one job cannot show drift between jobs (another
process on the host, GPU clocks and temperature, memory placement): `between_job_cv`, the relative spread of one
configuration's rate from job to job, is added to every comparison of two jobs as a known variance (2 log(1 +
cv)^2), and the optimal validation reports the drift it actually sees and checks a winner against the baseline's
settings measured in its own job (paired windows: drift between jobs cannot enter). The m points compared
(finished, packing >= the minimum, >= 2 repeats, a precision that passes the accuracy gate) are covered together:
each interval is taken at 1 - alpha/m (Bonferroni), so all m hold at once with probability >= 1 - alpha (95 %). A
winner is declared only when its interval's LOWER bound is above 1 + `min_gain`; among several, the one with the
highest lower bound (the gain that can be promised; the highest point estimate would favour the noisiest point).
Otherwise the recommendation is the baseline.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from virnucpro.report.accuracy import gate, gate_refusal, result_precision
from virnucpro.report.stats import all_rates, describe, paired_ratio_ci, ratio_ci
from virnucpro.settings import effective_knobs

ALPHA = 0.05
METHOD = (
    "Welch t on log sequences/s per window, plus the between-job variance 2 log(1 + between_job_cv)^2; "
    "simultaneous 95 % over the points compared (Bonferroni: each interval at 1 - 0.05/m, two-sided)"
)


def job_variance(between_job_cv: float) -> float:
    """Variance of the log ratio of two jobs' rates from drift between jobs alone."""
    return 2.0 * math.log1p(between_job_cv) ** 2


def _rates(result: dict, key: str = "sequences_per_sec") -> list[float]:
    if key == "sequences_per_sec":
        return list(result.get("repeats") or [])
    return list((result.get("tokens_per_sec") or {}).get("repeats") or [])


#: Fewest batches a measured window may hold: with fewer, a repeat is one or two batches' length mix rather than
#: a steady rate, and the spread of the repeats measures the batches, not the noise.
MIN_WINDOW_BATCHES = 3


def same_configuration(a: dict, b: dict) -> bool:
    """Whether two results ran the same configuration (prefetch without workers is no setting; precision as run)."""
    return {**effective_knobs(a["params"]), "precision": result_precision(a)} == {
        **effective_knobs(b["params"]),
        "precision": result_precision(b),
    }


def _why_not_compared(result: dict, min_packing: float) -> str | None:
    if result["status"] != "ok":
        return f"did not finish ({result.get('reason')})"
    if not all_rates(_rates(result)):
        return "a measured window has no rate (no batch finished in it)"
    packing = (result.get("steady") or {}).get("min_packing_efficiency") or 0.0
    if packing < min_packing:
        return f"packing efficiency {packing:.3f} < {min_packing:.2f}"
    if len(_rates(result)) < 2:
        return "fewer than 2 measured repeats: no interval"
    batches = [w.get("batches", 0) for w in (result.get("measurement") or {}).get("windows") or []]
    if batches and min(batches) < MIN_WINDOW_BATCHES:
        return (
            f"a measured window held {min(batches)} batch(es), fewer than {MIN_WINDOW_BATCHES}: its repeats are "
            "single batches' length mixes, not steady rates (lengthen measure.seconds)"
        )
    return None


def point_row(
    result: dict, baseline: dict | None, level: float, why_not: str | None, min_gain: float, known_var: float = 0.0
) -> dict:
    """One sweep point's figures: per-repeat rates, medians and intervals, speedup and its interval."""
    seq, tok = describe(_rates(result)), describe(_rates(result, "tokens_per_sec"))
    ratio = None
    if why_not is None and baseline is not None:
        ratio = ratio_ci(_rates(result), _rates(baseline), level, known_var)
    return {
        "label": result["label"],
        "group": result["group"],
        "params": result["params"],
        "precision": result_precision(result),
        "status": result["status"],
        "reason": result.get("reason"),
        "repeats": seq["repeats"],
        "median": seq["median"],
        "ci95": seq["ci95"],
        "tokens_per_sec": tok,
        "speedup": ratio["ratio"] if ratio else None,
        "speedup_ci95": [ratio["low"], ratio["high"]] if ratio else None,
        "compared": ratio is not None,
        "not_compared_because": why_not,
        "significant": bool(ratio and ratio["low"] > 1.0 + min_gain),
    }


def _decision_note(best: dict | None, base_why: str | None, m: int, min_gain: float, base_refusal: str | None) -> str:
    if best:
        return (
            f"{best['label']} beats the baseline: speedup {best['speedup']:.3f}x, simultaneous 95 % interval "
            f"[{best['speedup_ci95'][0]:.3f}, {best['speedup_ci95'][1]:.3f}] above {1 + min_gain:.2f}x"
        )
    if base_why:
        return (
            f"the baseline has no usable measurement ({base_why}): no speedup can be established; the settings "
            "are the baseline's"
        )
    note = (
        f"no point beats the baseline beyond noise (none of the {m} compared has its simultaneous 95 % "
        f"interval above {1 + min_gain:.2f}x): the recommended settings are the baseline's"
    )
    return note + (f"; but the baseline's own {base_refusal}" if base_refusal else "")


def _covering_cv(a: list[float], b: list[float], level: float) -> float:
    """The smallest between_job_cv whose allowance puts 1 inside `a`/`b`'s interval (bisection; <= 10)."""
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        r = ratio_ci(a, b, level, job_variance(mid))
        lo, hi = (lo, mid) if r["low"] <= 1.0 <= r["high"] else (mid, hi)
    return hi


def noise_check(results: list[dict], between_job_cv: float, alpha: float = ALPHA) -> dict:
    """Points that run one configuration in separate jobs (the baseline's own settings in a grid, prefetch
    without workers) measure the drift between jobs directly: each pair's speedup interval, with the allowance
    for `between_job_cv`, must contain 1 (all pairs at once: Bonferroni). If one does not, jobs on this host
    drift more than the allowance, every speedup interval is too narrow, and no winner can be declared."""
    usable = [r for r in results if _why_not_compared(r, 0.0) is None]
    usable.sort(key=lambda r: r["group"] != "baseline")  # a pair's reference: the baseline where it is one
    pairs = []
    for k, r in enumerate(usable):
        ref = next((s for s in usable[:k] if same_configuration(s, r)), None)
        if ref is not None:
            pairs.append((r, ref))
    level = 1.0 - alpha / max(1, len(pairs))
    rows = []
    for r, ref in pairs:
        ci = ratio_ci(_rates(r), _rates(ref), level, job_variance(between_job_cv))
        covering = _covering_cv(_rates(r), _rates(ref), level)
        rows.append(
            {
                "label": r["label"],
                "same_as": ref["label"],
                "ratio": ci["ratio"],
                "ci": [ci["low"], ci["high"]],
                "contains_one": ci["low"] <= 1.0 <= ci["high"],
                "covering_cv": covering,
            }
        )
    bad = [row for row in rows if not row["contains_one"]]
    if not rows:
        note = (
            "no two points ran one configuration: between_job_cv is taken on trust (keep the baseline's "
            "settings in a grid to check it)"
        )
    elif not bad:
        note = f"{len(rows)} repeated configuration(s) agree within between_job_cv {between_job_cv:g}"
    else:
        worst = max(bad, key=lambda row: row["covering_cv"])
        note = (
            f"between_job_cv {between_job_cv:g} is too small for this host: {worst['label']} ran the same "
            f"configuration as {worst['same_as']} at {worst['ratio']:.2f}x [{worst['ci'][0]:.2f}, "
            f"{worst['ci'][1]:.2f}]; covering that drift needs between_job_cv >= {worst['covering_cv']:.2f}"
        )
    return {"pairs": rows, "level": level, "refuted": bool(bad), "note": note}


def _why_not_a_candidate(
    r: dict, baseline: dict | None, base_usable: bool, min_packing: float, accuracy: dict | None
) -> str | None:
    """Why point `r` cannot win (None: it is compared): no usable baseline, no sound measurement, the baseline's
    own configuration (a placebo: it checks the noise), or a precision that fails the accuracy gate."""
    if not base_usable:
        return "the baseline has no interval"
    if why := _why_not_compared(r, min_packing):
        return why
    if same_configuration(r, baseline):
        return "the baseline's configuration: it checks the noise, it cannot beat it"
    return gate_refusal(result_precision(r), accuracy, result_precision(baseline))


def sweep_decision(
    results: list[dict],
    min_packing: float,
    min_gain: float = 0.02,
    alpha: float = ALPHA,
    between_job_cv: float = 0.0,
    accuracy: dict[str, dict] | None = None,
) -> dict:
    """The best-configuration record (best.json): the winner, or the baseline when no point is significant. With
    `accuracy` (a precision sweep's `bench accuracy` rows), a point whose precision fails the gate is not
    compared, saying why (`accuracy.gate_refusal`)."""
    baseline = next((r for r in results if r["group"] == "baseline"), None)
    base_why = _why_not_compared(baseline, 0.0) if baseline is not None else "there is no baseline"
    base_usable = base_why is None
    base_precision = result_precision(baseline) if baseline else None
    others = [r for r in results if r is not baseline]
    why = {id(r): _why_not_a_candidate(r, baseline, base_usable, min_packing, accuracy) for r in others}
    m = sum(why[id(r)] is None for r in others)
    level = 1.0 - alpha / max(1, m)
    rows = [point_row(baseline, None, level, None, min_gain)] if baseline else []
    rows += [point_row(r, baseline, level, why[id(r)], min_gain, job_variance(between_job_cv)) for r in others]
    noise = noise_check(results, between_job_cv, alpha)
    if noise["refuted"]:
        for row in rows:
            row["significant"] = False
    winners = [row for row in rows if row["significant"]]
    best = max(winners, key=lambda row: row["speedup_ci95"][0]) if winners else None
    chosen = best or (rows[0] if baseline else None)
    base_refusal = gate_refusal(base_precision, accuracy, base_precision) if baseline else None
    note = _decision_note(best, base_why, m, min_gain, base_refusal)
    if noise["refuted"]:
        note = f"no winner can be declared: {noise['note']}; the recommended settings are the baseline's"
    return {
        "label": chosen["label"] if chosen else None,
        "params": chosen["params"] if chosen else None,
        "steady": next((r.get("steady") for r in results if chosen and r["label"] == chosen["label"]), None),
        "significant": best is not None,
        "speedup": best["speedup"] if best else None,
        "speedup_ci95": best["speedup_ci95"] if best else None,
        "speedup_over_baseline": best["speedup"] if best else None,
        "baseline_label": baseline["label"] if baseline else None,
        "min_gain": min_gain,
        "min_packing": min_packing,
        "alpha": alpha,
        "between_job_cv": between_job_cv,
        "comparisons": m,
        "interval_level_each": level,
        "method": METHOD,
        "note": note,
        "candidates": len(results),
        "accuracy_gate": {p: gate(row)[0] for p, row in sorted((accuracy or {}).items())},
        "baseline_accuracy_refusal": base_refusal,
        "noise_check": noise,
        "sweep_points": rows,
    }


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _ratio(a: dict | None, b: dict | None, known_var: float = 0.0, paired: bool = False) -> dict | None:
    """Speedup interval (95 %) of finished result `a` over `b`; None when either failed or has < 2 repeats."""
    if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
        return None
    if paired:
        return paired_ratio_ci(_rates(a), _rates(b), 0.95)
    return ratio_ci(_rates(a), _rates(b), 0.95, known_var)


def _pair(prefix: str, r: dict | None) -> dict:
    return {prefix: r["ratio"] if r else None, prefix + "_ci95": [r["low"], r["high"]] if r else None}


def _excludes_one(r: dict | None) -> bool:
    return bool(r and not r["low"] <= 1.0 <= r["high"])


def _validation_notes(basis: dict, claimed, best: dict, in_job: bool, confirmed: bool, contradicted: bool) -> list:
    """What the validation's speedup interval (`basis`) says of the sweep's claim, in words."""
    interval = f"[{basis['low']:.3f}, {basis['high']:.3f}]"
    notes = []
    if in_job:
        notes.append(
            f"paired with the baseline's settings in this job (alternating windows, no between-job variance): "
            f"{basis['ratio']:.3f}x {interval}, {'confirmed' if confirmed else 'not confirmed'}"
        )
    if not contradicted:
        notes.append("the validation agrees with the sweep")
    elif best.get("significant"):
        notes.append(
            f"the validation contradicts the sweep: its speedup interval {interval} excludes the claimed "
            f"[{claimed[0]:.3f}, {claimed[1]:.3f}]"
        )
    else:
        notes.append(
            f"the baseline's settings, measured again, ran {basis['ratio']:.3f}x the baseline {interval}: jobs "
            "drift more than between_job_cv allows, so the sweep's intervals are too narrow"
        )
    return notes


def validation_check(result: dict, baseline: dict | None, best: dict) -> dict:
    """The recommended settings measured again (`result`), in a job of their own.

    When they differ from the baseline's, the job measured the baseline's settings too, windows alternating
    (`result["baseline_in_job"]`): `speedup` is then the paired comparison of the two in this job (Student's t on
    the per-pair log ratios, no between-job variance: drift between jobs cannot enter, both sides share the job),
    and it decides `confirmed` (the lower bound beats 1 + min_gain) and `contradicted` (the interval misses the
    claimed one). Without a winner (one configuration measured), `speedup` is over the sweep's baseline job with
    the between-job allowance, as the sweep compared; that reuses the sweep's baseline sample, so it is not
    independent of the sweep, and it is always reported as `speedup_vs_sweep_baseline`. Drift checks: each
    setting's rate here against its own sweep job (`rate_vs_sweep`, `baseline_rate_vs_sweep`): an interval
    excluding 1 shows drift between jobs that the repeats inside one job cannot see (`drift_between_jobs`).
    """
    same = next((row for row in best.get("sweep_points", []) if row["label"] == best.get("label")), None)
    in_job = result.get("baseline_in_job")
    vs_base = _ratio(result, baseline, job_variance(best.get("between_job_cv", 0.0)))
    paired = _ratio(result, in_job, paired=True) if in_job is not None else None
    basis = paired if in_job is not None else vs_base
    vs_sweep = _ratio(result, same)  # no allowance: this is where drift between jobs shows
    base_vs_sweep = _ratio(in_job, baseline) if in_job is not None else None
    claimed = best.get("speedup_ci95") if best.get("significant") else [1.0, 1.0]
    out = {
        "claimed_speedup_ci95": claimed,
        "significant_claim": bool(best.get("significant")),
        "comparison": "in-job paired" if in_job is not None else "sweep baseline job",
        **_pair("speedup", basis),
        **_pair("speedup_vs_sweep_baseline", vs_base),
        **_pair("rate_vs_sweep", vs_sweep),
        **_pair("baseline_rate_vs_sweep", base_vs_sweep),
        "drift_between_jobs": _excludes_one(vs_sweep) or _excludes_one(base_vs_sweep),
    }
    if basis is None:
        return {**out, "confirmed": None, "contradicted": None, "note": "no interval: a run failed or had < 2 repeats"}
    contradicted = not _overlap(claimed, out["speedup_ci95"])
    confirmed = bool(best.get("significant")) and basis["low"] > 1.0 + best.get("min_gain", 0.02)
    notes = _validation_notes(basis, claimed, best, in_job is not None, confirmed, contradicted)
    for what, r in (("same settings", vs_sweep), ("baseline's settings", base_vs_sweep)):
        if _excludes_one(r):
            notes.append(
                f"the {what} ran {r['ratio']:.3f}x their sweep rate: jobs drift more than the repeats inside one "
                "job show"
            )
    return {**out, "confirmed": confirmed, "contradicted": contradicted, "note": "; ".join(notes)}


def recommendation(best: dict | None, validation: dict | None) -> dict | None:
    """The settings to run, from best.json and its validation (optimal.json's `validation`, None before it ran):
    the sweep's winner only once its own job confirmed it against the baseline's settings measured beside it;
    otherwise the baseline's settings, saying why. `status`: validated, baseline (no winner), not validated,
    not confirmed or contradicted."""
    if not best:
        return None
    if not best.get("significant"):
        return {
            "status": "baseline",
            "label": best.get("label"),
            "params": best.get("params"),
            "note": best.get("note"),
        }
    label = best["label"]
    claim = f"{label} ({best['speedup']:.2f}x the baseline in the sweep)" if best.get("speedup") else label
    if validation and validation.get("confirmed"):
        note = f"{claim}, confirmed by its validation: {validation['speedup']:.2f}x the baseline's settings in one job"
        return {"status": "validated", "label": label, "params": best.get("params"), "note": note}
    if not validation:
        status, why = "not validated", "its validation (results/sweeps/optimal.json) has not run"
    elif validation.get("contradicted"):
        status, why = "contradicted", "its validation contradicts the sweep"
    else:
        status, why = "not confirmed", "its validation did not confirm a gain beyond min_gain"
    base = next((r for r in best.get("sweep_points") or [] if r["label"] == best.get("baseline_label")), None)
    return {
        "status": status,
        "label": best.get("baseline_label"),
        "params": base["params"] if base else None,
        "candidate": label,
        "note": f"{claim} is not recommended: {why}; the settings are the baseline's",
    }


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


TSV_COLUMNS = (
    "group",
    "label",
    "params",
    "status",
    "seq_per_sec_median",
    "seq_per_sec_ci95_low",
    "seq_per_sec_ci95_high",
    "tok_per_sec_median",
    "tok_per_sec_ci95_low",
    "tok_per_sec_ci95_high",
    "speedup",
    "speedup_ci95_low",
    "speedup_ci95_high",
    "significant",
    "note",
)


def write_sweeps_tsv(decision: dict, path: Path) -> None:
    """`results/sweeps.tsv`: one row per point (the decision's figures, tab-separated, params as JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(TSV_COLUMNS)
        for row in decision["sweep_points"]:
            ci, tok, sp = row["ci95"] or [None] * 2, row["tokens_per_sec"], row["speedup_ci95"] or [None] * 2
            tci = tok["ci95"] or [None] * 2
            w.writerow(
                [
                    _fmt(v)
                    for v in (
                        row["group"],
                        row["label"],
                        json.dumps(row["params"], sort_keys=True),
                        row["status"],
                        row["median"],
                        ci[0],
                        ci[1],
                        tok["median"],
                        tci[0],
                        tci[1],
                        row["speedup"],
                        sp[0],
                        sp[1],
                        "yes" if row["significant"] else "no",
                        row["not_compared_because"] or row["reason"],
                    )
                ]
            )
