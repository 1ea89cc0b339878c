"""The accuracy gate of a precision sweep: `virnucpro bench accuracy` results, read once for `best-config` (a
precision that fails the gate is never recommended) and for the report (accuracy next to speed).

A precision is recommended automatically only through its gate: per-sequence cosine similarity of the pooled
embedding with fair-esm fp32 on the same weights >= 0.999 for >= 99 % of sequences. Precision is a sweep knob
like the others because the sweep is opt-in (`sweeps.precision` is empty by default) and the gate is measured on
the weights the recommendation is for; on random weights it is measured on the easy case (no outlier channels),
which the report says next to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from virnucpro.defaults import ACCURACY_GATE, GATE_FRACTION
from virnucpro.errors import UserError
from virnucpro.settings import CONCRETE_PRECISIONS
from virnucpro.utils.jsonfile import read_object

#: The gate this module applies (and `bench accuracy` writes into its results).
GATE = ACCURACY_GATE


def load_accuracy(paths: list[str | Path]) -> dict[str, dict]:
    """{precision: its row} from `bench accuracy` JSONs, each row with the file's weights, device, sample size and
    gate; a file without a precision row is refused (exit 2)."""
    out: dict[str, dict] = {}
    for path in paths:
        data = read_object(path, "--accuracy")
        rows = {k: v for k, v in data.items() if k in CONCRETE_PRECISIONS and isinstance(v, dict)}
        if not rows:
            raise UserError(f"{path}: not a `virnucpro bench accuracy` result (no {'/'.join(CONCRETE_PRECISIONS)} row)")
        for name, row in rows.items():
            out[name] = {
                **row,
                "precision": name,
                "weights": data.get("weights"),
                "device": data.get("device"),
                "num_sequences": data.get("num_sequences"),
                "gate": data.get("gate") or GATE,
                "file": str(path),
            }
    return out


def gate(row: dict | None) -> tuple[str, str | None]:
    """(PASS, FAIL or N/A, why) of one precision's accuracy row (None: not measured)."""
    if row is None:
        return "N/A", "no accuracy measurement of this precision"
    if row.get("error"):
        return "N/A", f"the accuracy job could not run it: {row['error']}"
    if "gate_pass" not in row:
        return "N/A", "the accuracy result has no gate (made before the gate was measured)"
    if row["gate_pass"]:
        return "PASS", None
    if not row.get("finite", True):
        return "FAIL", "non-finite embeddings"
    reached = 100 * row["cosine_ge_gate_fraction"]
    return "FAIL", f"{reached:.1f} % of sequences reach the cosine bound, fewer than {100 * GATE_FRACTION:.0f} %"


def gate_refusal(precision: str | None, accuracy: dict[str, dict] | None, baseline_precision: str | None) -> str | None:
    """Why a sweep point at `precision` must not be declared best, or None. Without accuracy results (no
    precision sweep) nothing is refused; the baseline's precision is the user's own choice and is refused only
    when measured and failing; any other precision must have passed."""
    if not accuracy:
        return None
    status, why = gate(accuracy.get(precision or ""))
    if status == "PASS" or (status == "N/A" and precision == baseline_precision):
        return None
    verb = "fails" if status == "FAIL" else "has no pass of"
    return f"precision {precision} {verb} the accuracy gate ({GATE}): {why}"


def result_precision(result: dict) -> str | None:
    """The precision a sweep point ran (auto resolved, from its measurement), else the one it asked for."""
    return (result.get("measurement") or {}).get("precision") or (result.get("params") or {}).get("precision")


def weights_text(label: str | None) -> str:
    """The accuracy job's weights in words; random weights say what that leaves unchecked."""
    try:
        w = json.loads(label or "")
    except ValueError:
        return label or "N/A"
    if not isinstance(w, dict):
        return str(label)
    if w.get("weights") == "random":
        return (
            f"random weights ({w.get('model')}, seed {w.get('seed')}): no trained outlier channels, so not a check "
            "of real weights (run bench accuracy --checkpoint)"
        )
    sha = str(w.get("sha256") or "")[:12]
    return f"checkpoint {w.get('path') or w.get('model')}" + (f" (sha256 {sha}…)" if sha else "")
