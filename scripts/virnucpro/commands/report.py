"""`virnucpro report`: the verdicts rendered as report.html, report.txt and summary.json."""

from __future__ import annotations

from pathlib import Path

from virnucpro.commands import help_style
from virnucpro.errors import EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="verdicts (one engine) rendered as report.html, report.txt and summary.json", **help_style()
    )
    p.add_argument("results", nargs="+", type=Path, help="result JSONs of every job (run-point)")
    p.add_argument("--input-info", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True, help="the workflow's configuration as JSON")
    p.add_argument("--scaling", type=Path, required=True, help="scaling.json of `virnucpro scaling`")
    p.add_argument("--best", type=Path, help="best.json of `virnucpro best-config`")
    p.add_argument("--peers", type=Path, help="peers JSON of `virnucpro bench peers` (optional GPU job)")
    p.add_argument("--accuracy", nargs="+", type=Path, default=[], help="`bench accuracy` JSONs of the precision sweep")
    p.add_argument("--compare-to", type=Path, help="a previous summary.json: each figure's change against it")
    p.add_argument("--merged", nargs="*", type=Path, default=[], help="merged telemetry JSONs (linked)")
    p.add_argument("--html", type=Path, required=True)
    p.add_argument("--text", type=Path)
    p.add_argument("--summary", type=Path)
    p.add_argument("--workflow-dir", type=Path, help="where to read the git commit from")
    p.set_defaults(handler=run)


def run(args) -> int:
    from virnucpro.report.accuracy import load_accuracy
    from virnucpro.report.render import write_report
    from virnucpro.report.results import load_results
    from virnucpro.utils.jsonfile import read_object

    info = read_object(args.input_info, "--input-info", ("source", "num_sequences", "sha256"))
    config = read_object(args.config, "--config", ("model", "engine"))
    best = read_object(args.best, "--best", ("label", "significant"))
    scaling = read_object(args.scaling, "--scaling", ("rows", "projections"))
    peers = read_object(args.peers, "--peers", ("runs",))
    previous = read_object(args.compare_to, "--compare-to", ("verdicts",))
    ctx = write_report(
        load_results(args.results),
        info,
        config,
        best,
        args.html,
        args.text,
        args.summary,
        args.merged,
        args.workflow_dir,
        scaling,
        peers,
        (str(args.compare_to), previous) if previous is not None else None,
        load_accuracy(args.accuracy),
    )
    c = ctx["verdict_counts"]
    print(f"report: {args.html} ({c['PASS']} PASS, {c['FAIL']} FAIL, {c['N/A']} N/A)")
    return EXIT_OK
