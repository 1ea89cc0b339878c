"""PASS / FAIL / N/A verdicts of the validation plan (10-02) from the workflow's job results.

Every verdict carries the measured value, the threshold and, when N/A, why: a figure that was not measured
is never shown as 0 and never passes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from virnucpro.defaults import TARGET_SEQUENCES
from virnucpro.report.accuracy import GATE
from virnucpro.report.results import checkpoint_overhead, invalid_run, resumed_na_reason

DEFAULT_THRESHOLDS = {
    "target_sequences": TARGET_SEQUENCES,
    "max_hours": 10.0,
    "min_gpu_util": 70.0,
    "min_speedup_2gpu": 1.9,
    "min_scaling_efficiency": 95.0,
    "min_packing": 0.90,
    "max_p95_wait_ms": 100.0,
    "max_checkpoint_overhead_pct": 15.0,
}


@dataclass
class Verdict:
    id: str
    title: str
    scope: str  # which run or GPU it is about
    value: float | None
    unit: str
    threshold: str
    status: str  # PASS, FAIL or N/A
    reason: str | None = None  # why N/A, or a caveat

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(value: float | None, ok: bool | None, na_reason: str) -> tuple[str, str | None]:
    if value is None:
        return "N/A", na_reason
    return ("PASS" if ok else "FAIL"), None


def invalid_runs_na(verdict: Verdict, *runs: dict | None) -> Verdict:
    """A PASS or FAIL that rests on a run flagged INVALID (warm-up not excluded, too few steady batches) becomes
    N/A: the figure stays visible with what it would have said, but it is not a verdict anyone should act on."""
    bad = [r["label"] for r in runs if invalid_run(r)]
    if verdict.status not in ("PASS", "FAIL") or not bad:
        return verdict
    note = f"not judged: {', '.join(bad)} INVALID (see Runs flagged); the figure alone: {verdict.status}"
    verdict.status, verdict.reason = "N/A", f"{note}; {verdict.reason}" if verdict.reason else note
    return verdict


def _on_gpu(result: dict) -> bool:
    return any(str(r.get("device", "")).startswith("cuda") for r in result.get("ranks", []))


def perf01_verdicts(judged: dict | None, proj: dict | None, th: dict) -> list[Verdict]:
    """PERF-01 on the whole job's projected hours (fixed + growing costs + loop), sequence- and token-based, of
    the `judged` run (`perf01_run`)."""
    out = []
    target = int(th["target_sequences"])
    scope = f"{judged['label']} ({judged['params']['world_size']} rank(s))" if judged else "-"
    for basis, key, loop_key in (
        ("sequence-based", "job_hours", "loop_hours"),
        ("token-based", "job_hours_tokens", "loop_hours_tokens"),
    ):
        value = proj.get(key) if proj else None
        if judged is None:
            reason = "no production run finished"
        elif value is None:
            loop = proj.get(loop_key) if proj else None
            reason = (proj or {}).get("na_reason") or "no projection in scaling.json"
            reason += f" (loop alone: {loop:.3g} h)" if loop is not None else ""
        else:
            reason = f"loop {proj[loop_key]:.3g} h + fixed and growing costs {value - proj[loop_key]:.3g} h"
        status = "N/A" if value is None else ("PASS" if value < th["max_hours"] else "FAIL")
        title = f"projected job time for {target:,} sequences ({basis})"
        verdict = Verdict("PERF-01", title, scope, value, "h", f"< {th['max_hours']:g} h", status, reason)
        out.append(invalid_runs_na(verdict, judged))
    return out


def perf03_verdicts(ok: list[dict], scaling: dict, th: dict) -> list[Verdict]:
    """PERF-03 per multi-rank run from scaling.json's measured rows (CPU processes are N/A, not a GPU figure)."""
    out: list[Verdict] = []
    rows = {row["world_size"]: row for row in scaling.get("rows") or []}
    at_target = {row["world_size"]: row for row in scaling.get("at_target") or []}
    one_rank = next((r for r in ok if r["params"]["world_size"] == 1), None)
    for result in ok:
        n = result["params"]["world_size"]
        if n == 1:
            continue
        value, reason, status = None, None, "N/A"
        if n not in rows:
            reason = "no 1-rank run to compare with"
        elif rows[n].get("not_comparable"):  # a resumed run timed only part of the work
            reason = rows[n]["not_comparable"]
        else:
            sc = rows[n]
            value = sc["speedup"]
            min_speedup = th["min_speedup_2gpu"] * n / 2  # 1.9x for 2 GPUs, scaled for N
            passed = sc["speedup"] >= min_speedup and sc["efficiency"] >= th["min_scaling_efficiency"]
            if not _on_gpu(result):
                status, reason = (
                    "N/A",
                    (
                        f"ranks were CPU processes sharing the host's cores: measured {value:.2f}x, "
                        f"{sc['efficiency']:.0f} % efficiency, not a GPU scaling figure"
                    ),
                )
            else:
                status = "PASS" if passed else "FAIL"
                reason = f"{sc['efficiency']:.1f} % efficiency, ideal {sc['ideal_runtime']:.1f} s"
            job = (at_target.get(n) or {}).get("job_speedup")
            if job is not None:
                reason += f"; whole job at the target: {job:.2f}x"
        threshold = f">= {th['min_speedup_2gpu'] * n / 2:.2f}x and >= {th['min_scaling_efficiency']:g} %"
        title = f"scaling 1 -> {n} ranks (speedup)"
        verdict = Verdict("PERF-03", title, result["label"], value, "x", threshold, status, reason)
        out.append(invalid_runs_na(verdict, result, one_rank))
    if not any(r["params"]["world_size"] > 1 for r in ok):
        out.append(
            Verdict(
                "PERF-03",
                "scaling 1 -> N ranks (speedup)",
                "-",
                None,
                "x",
                f">= {th['min_speedup_2gpu']:.2f}x (2 GPUs) and >= {th['min_scaling_efficiency']:g} %",
                "N/A",
                "no finished run with more than one rank (production.world_sizes)",
            )
        )
    return out


def perf02_verdicts(ok: list[dict], th: dict) -> list[Verdict]:
    """PERF-02: each GPU's steady-state utilisation (N/A on CPU or without NVML)."""
    out = []
    for result in ok:
        for rank in result["ranks"]:
            util = (rank.get("steady") or {}).get("avg_gpu_util")
            na = (
                "no GPU: the run was on CPU"
                if not str(rank.get("device", "")).startswith("cuda")
                else "NVML could not be read (no nvitop/driver access)"
            )
            status, reason = _check(util, util is not None and util >= th["min_gpu_util"], na)
            scope = f"{result['label']} rank {rank['rank']} ({rank.get('device')})"
            threshold = f">= {th['min_gpu_util']:g} %"
            verdict = Verdict("PERF-02", "GPU utilisation (steady state)", scope, util, "%", threshold, status, reason)
            out.append(invalid_runs_na(verdict, result))
    return out


def perf05_verdicts(ok: list[dict], th: dict) -> list[Verdict]:
    """PERF-05: each rank's packing efficiency."""
    out = []
    for result in ok:
        for rank in result["ranks"]:
            pack = (rank.get("steady") or {}).get("avg_packing_efficiency")
            status, reason = _check(pack, pack is not None and pack >= th["min_packing"], "no batches")
            scope, threshold = f"{result['label']} rank {rank['rank']}", f">= {th['min_packing']:.2f}"
            verdict = Verdict("PERF-05", "packing efficiency", scope, pack, "", threshold, status, reason)
            out.append(invalid_runs_na(verdict, result))
    return out


def loader_verdicts(ok: list[dict], th: dict) -> list[Verdict]:
    """The DataLoader's p95 wait of each run (its worst rank)."""
    out = []
    for result in ok:
        p95 = (result.get("steady") or {}).get("p95_wait_time_ms")
        status, reason = _check(p95, p95 is not None and p95 < th["max_p95_wait_ms"], "no batches")
        threshold = f"< {th['max_p95_wait_ms']:g} ms"
        title = "DataLoader wait p95 (worst rank)"
        out.append(
            invalid_runs_na(Verdict("LOADER", title, result["label"], p95, "ms", threshold, status, reason), result)
        )
    return out


def perf01_run(ok: list[dict], projections: dict) -> dict | None:
    """The run PERF-01 judges: the widest (all the GPUs measured); but where the ranks were CPU processes sharing
    one host's cores, more ranks are not more hardware, so the run with the shortest projected job."""
    if not ok:
        return None
    if _on_gpu(ok[-1]):
        return ok[-1]
    return min(ok, key=lambda r: (projections.get(r["label"]) or {}).get("job_hours") or math.inf)


def production_verdicts(production: list[dict], thresholds: dict, scaling: dict | None = None) -> list[Verdict]:
    """The production runs' verdicts; projections and speedups come from `scaling` (scaling.json), not recomputed."""
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    scaling = scaling or {}
    ok = sorted((r for r in production if r["status"] == "ok"), key=lambda r: r["params"]["world_size"])
    projections = {p["label"]: p["projection"] for p in scaling.get("projections") or []}
    judged = perf01_run(ok, projections)
    out = perf01_verdicts(judged, projections.get(judged["label"]) if judged else None, th)
    out += perf02_verdicts(ok, th)
    out += perf03_verdicts(ok, scaling, th)
    out += perf05_verdicts(ok, th)
    out += loader_verdicts(ok, th)
    for result in production:
        if result["status"] != "ok":
            out.append(
                Verdict("RUN", "production run", result["label"], None, "", "finishes", "FAIL", result.get("reason"))
            )
    return out


def checkpoint_verdict(on: dict | None, off: dict | None, thresholds: dict) -> Verdict:
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    na = resumed_na_reason(on, off) or "checkpoint-overhead runs missing or failed"
    value = None if resumed_na_reason(on, off) else checkpoint_overhead(on, off)
    status, reason = _check(value, value is not None and value < th["max_checkpoint_overhead_pct"], na)
    if value is not None and value < 0:  # writing checkpoints cannot save time: the difference is noise
        reason = (
            "below what these runs resolve: the run with checkpoints was the faster one (loops of "
            f"{on['summary']['elapsed_seconds']:.1f} s and {off['summary']['elapsed_seconds']:.1f} s, one run "
            "each); longer checkpoint workloads (workloads.checkpoint) resolve smaller costs"
        )
    every = on["params"]["checkpoint_every"] if on else "?"
    verdict = Verdict(
        "CKPT",
        f"checkpoint overhead (every {every} sequences vs none)",
        "checkpoint runs",
        value,
        "%",
        f"< {th['max_checkpoint_overhead_pct']:g} %",
        status,
        reason,
    )
    return invalid_runs_na(verdict, on, off)


def accuracy_verdicts(precision_rows: list[dict]) -> list[Verdict]:
    """ACCURACY: one per precision of the Precision table (its gate, as best-config applied it), the share of
    sequences whose embedding reaches the cosine bound against fair-esm fp32, and on which weights."""
    out, seen = [], set()
    for row in precision_rows:
        if row["precision"] is None or row["precision"] in seen:
            continue
        seen.add(row["precision"])
        fraction = row["cosine_ge_gate_fraction"]
        if row["gate"] == "N/A":
            reason = row["gate_reason"]
        else:
            figures = (
                f"cosine p01 {row['cosine_p01']:.5f}, relative L2 median {row['rel_l2_median']:.2e}, "
                f"p99 {row['rel_l2_p99']:.2e}"
            )
            reason = "; ".join(x for x in (row["gate_reason"], figures, row["provenance"]) if x)
        out.append(
            Verdict(
                "ACCURACY",
                "embedding accuracy vs fair-esm fp32 (sequences at the cosine bound)",
                f"precision {row['precision']}",
                None if fraction is None else 100 * fraction,
                "%",
                row["gate_threshold"] or GATE,
                row["gate"],
                reason,
            )
        )
    return out
