"""Intervals for repeated throughput measurements (no SciPy: Student's t from the incomplete beta function).

Rates are compared on the log scale: a throughput's noise is multiplicative (a slower clock or a busier host
scales every batch), the log makes a ratio a difference, and the interval of a speedup then comes out as a
ratio interval that is never negative. A point's rate interval is that of its geometric mean; a speedup's
is Welch's t interval for the difference of two means of logs (unequal variances, Welch-Satterthwaite
degrees of freedom), exponentiated.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """Lentz's evaluation of the incomplete beta function's continued fraction (Numerical Recipes' betacf)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
            -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_pdf(t: float, df: float) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` (real, > 0) degrees of freedom, to ~1e-12 relative: Newton steps
    kept inside a bracket that bisection narrows whenever a step would leave it."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, not p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    t = 0.5 * (lo + hi)
    for _ in range(200):
        f = t_cdf(t, df) - p
        lo, hi = (t, hi) if f < 0 else (lo, t)
        step = f / t_pdf(t, df)
        new = t - step if lo < t - step < hi else 0.5 * (lo + hi)
        if abs(new - t) <= 1e-13 * max(1.0, abs(t)):
            return new
        t = new
    return t


def all_rates(values: Sequence) -> bool:
    """Whether every value is a rate: a positive number (a window in which no batch finished has none)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)


def _logs(values: Sequence[float]) -> list[float]:
    if not all_rates(values):
        raise ValueError(f"rates must be positive numbers, not {list(values)}")
    return [math.log(v) for v in values]


def geometric_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Two-sided `level` t interval of the geometric mean of positive `values`; None with fewer than 2."""
    if len(values) < 2:
        return None
    logs = _logs(values)
    half = t_quantile(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    centre = statistics.fmean(logs)
    return math.exp(centre - half), math.exp(centre + half)


def ratio_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, known_var: float = 0.0) -> dict | None:
    """Ratio of the geometric means of `a` over `b` with Welch's two-sided `level` interval; None when either
    side has fewer than 2 values. `known_var` is a variance of the log ratio that the samples cannot show (e.g.
    drift between jobs), added with infinite degrees of freedom. Returns {ratio, low, high, df, level}."""
    if len(a) < 2 or len(b) < 2:
        return None
    la, lb = _logs(a), _logs(b)
    va, vb = statistics.variance(la) / len(la), statistics.variance(lb) / len(lb)
    diff = statistics.fmean(la) - statistics.fmean(lb)
    se = math.sqrt(va + vb + known_var)
    denominator = va**2 / (len(la) - 1) + vb**2 / (len(lb) - 1)
    if se == 0.0:  # identical repeats on both sides and nothing known: no spread to scale by
        df = float(len(la) + len(lb) - 2)
    else:
        df = (va + vb + known_var) ** 2 / denominator if denominator > 0 else math.inf
    quantile = statistics.NormalDist().inv_cdf(0.5 + level / 2) if df > 1e6 else t_quantile(0.5 + level / 2, df)
    return _ratio_interval(diff, quantile * se, df, level)


def _ratio_interval(log_ratio: float, half: float, df: float, level: float) -> dict:
    """A log-scale interval (centre +- half) as a ratio interval."""
    return {
        "ratio": math.exp(log_ratio),
        "low": math.exp(log_ratio - half),
        "high": math.exp(log_ratio + half),
        "df": df,
        "level": level,
    }


def paired_ratio_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict | None:
    """Ratio of the geometric means of `a` over `b` whose values are paired (a[i] and b[i] measured back to back
    in one job): Student's t interval of the mean log ratio, so drift that hits both of a pair alike cancels.
    None with fewer than 2 pairs. Returns {ratio, low, high, df, level}, as `ratio_ci`."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal lengths, not {len(a)} and {len(b)}")
    if len(a) < 2:
        return None
    diffs = [x - y for x, y in zip(_logs(a), _logs(b))]
    centre, df = statistics.fmean(diffs), float(len(diffs) - 1)
    half = t_quantile(0.5 + level / 2, df) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return _ratio_interval(centre, half, df, level)


def describe(values: Sequence[float], level: float = 0.95) -> dict:
    """Per-repeat values with their median and the `level` interval of their geometric mean (none when a value
    is missing or not positive: a window without a finished batch has no rate)."""
    values = [None if v is None else float(v) for v in values]
    rates = [v for v in values if v is not None]
    ci = geometric_ci(values, level) if values and all_rates(values) else None
    return {
        "repeats": values,
        "median": statistics.median(rates) if rates else None,
        "ci95": list(ci) if ci else None,
    }
