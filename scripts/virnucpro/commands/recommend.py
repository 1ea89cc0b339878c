"""`virnucpro recommend`: the settings to run, once the best configuration's validation has spoken."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK, UserError


def register(sub) -> None:
    p = sub.add_parser(
        "recommend",
        help="the sweep's winner if its validation confirmed it, else the baseline's settings (recommended.json)",
        **help_style(
            "virnucpro recommend results/sweeps/best.json --validation results/sweeps/optimal.json "
            "--baseline results/sweeps/baseline/baseline.json -o results/sweeps/recommended.json"
        ),
    )
    p.add_argument("best", type=Path, help="best-config's JSON (results/sweeps/best.json)")
    p.add_argument("--validation", type=Path, help="the optimal validation's result (results/sweeps/optimal.json)")
    p.add_argument("--baseline", type=Path, required=True, help="the sweep baseline's result (its measured rate)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.pipeline.output import write_json_atomic
    from virnucpro.report.results import RESULT_KEYS
    from virnucpro.report.significance import recommendation
    from virnucpro.utils.jsonfile import read_object

    best = read_object(args.best, "best", ("label", "params", "significant"))
    validated = read_object(args.validation, "--validation", RESULT_KEYS) if args.validation else None
    baseline = read_object(args.baseline, "--baseline", RESULT_KEYS)
    if best["significant"] and validated is not None and "validation" not in validated:
        raise UserError(f"{args.validation}: a result without `validation`, not the optimal validation's")
    rec = recommendation(best, (validated or {}).get("validation"))
    chosen = best if rec["status"] == "validated" or not best["significant"] else baseline
    write_json_atomic(args.output, {**rec, "steady": chosen.get("steady"), "best": str(args.best)})
    print(f"recommended: {rec['label']} ({rec['status']}: {rec['note']})")
    return EXIT_OK
