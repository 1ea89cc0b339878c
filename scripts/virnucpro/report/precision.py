"""The report's Precision table: each precision the sweep measured, its speed next to its accuracy.

One row per precision point and one for the baseline (its precision resolved as it ran): steady sequences/s
(median of the windows, 95 % interval), speedup over the baseline, and from the precision's `bench accuracy`
result the cosine p01, relative L2 median and p99, the gate and the weights it was checked on. What was not
measured is N/A with the reason, never a number. The gate column is what the ACCURACY verdicts and best-config
read (`accuracy.gate`).
"""

from __future__ import annotations

from virnucpro.report.accuracy import gate, result_precision, weights_text
from virnucpro.report.results import speedup


def _accuracy_fields(acc: dict | None, is_baseline: bool) -> dict:
    status, why = gate(acc)
    if acc is None and is_baseline:
        why += " (the plan checks the baseline's precision only when model.precision or engine.device names it)"
    acc = acc or {}
    provenance = None
    if acc.get("weights") is not None:
        provenance = f"{weights_text(acc['weights'])}; {acc.get('num_sequences')} sequences on {acc.get('device')}"
        provenance += f"; fp8 kernel: {acc['kernel']}" if acc.get("kernel") else ""
    return {
        "cosine_p01": acc.get("cosine_p01"),
        "cosine_ge_gate_fraction": acc.get("cosine_ge_gate_fraction"),
        "rel_l2_median": acc.get("median"),
        "rel_l2_p99": acc.get("p99"),
        "gate": status,
        "gate_threshold": acc.get("gate"),
        "gate_reason": why,
        "provenance": provenance,
    }


def precision_rows(by_group: dict[str, list[dict]], baseline: dict | None, accuracy: dict[str, dict]) -> list[dict]:
    """The table's rows (none without a precision sweep): the baseline first, then the points by label."""
    points = sorted(by_group.get("precision", []), key=lambda r: r["label"])
    if not points:
        return []
    rows = []
    for r in ([baseline] if baseline else []) + points:
        precision, ok = result_precision(r), r["status"] == "ok"
        rows.append(
            {
                "label": r["label"],
                "precision": precision,
                "status": r["status"],
                "sequences_per_sec": r.get("median") if ok else None,
                "ci95": r.get("ci95") if ok else None,
                "repeats": len(r.get("repeats") or []),
                "speed_na_reason": None if ok else f"did not finish: {r.get('reason')}",
                "speedup": speedup(r, baseline),
                **_accuracy_fields(accuracy.get(precision or ""), r is baseline),
            }
        )
    return rows
