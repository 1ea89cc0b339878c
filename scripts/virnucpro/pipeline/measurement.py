"""A measurement job's OUTDIR holds only what this configuration computed.

`virnucpro embed` reuses a complete `embeddings.h5` of the same input and weights whatever the throughput
settings, and resumes checkpoint chunks: right for users, wrong for a benchmark, where a token budget of 2048
must not be reported with a 1024 run's numbers. `run-point` therefore records what it is about to run in
`OUTDIR/measurement.json` and, before embedding, clears what a different configuration (or an unknown one)
left, and any finished result (a rerun is asked to measure again). Only the partial results of an interrupted
attempt of the very same configuration are kept, so that a preempted job's retry resumes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from virnucpro.errors import UserError
from virnucpro.pipeline.output import PARTIAL_DIR
from virnucpro.utils.jsonfile import write_json_atomic

MARKER = "measurement.json"
#: What `virnucpro embed` writes into OUTDIR (anything else there is left alone).
OUTPUTS = ("embeddings.h5", "status.json", "telemetry", PARTIAL_DIR, MARKER)
#: Settings that change nothing computed (logs, projections, caches, the overwrite action): may differ on a resume.
NOT_MEASURED = (
    "progress_interval",
    "target_sequences",
    "monitor_interval",
    "extra_metadata",
    "overwrite",
    "compile_cache",
)


def identity(cfg) -> dict:
    """What must be equal for an attempt to continue another: every computing setting and the input file."""
    ident = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items() if k not in NOT_MEASURED}
    stat = Path(cfg.fasta).stat() if Path(cfg.fasta).is_file() else None
    ident["input_file"] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns} if stat else None
    return ident


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def stale_reason(outdir: Path, ident: dict) -> str | None:
    """Why OUTDIR's contents may not be reused by a measurement of `ident` (None: empty, or resumable)."""
    present = [name for name in OUTPUTS if (outdir / name).exists()]
    if not present:
        return None
    recorded = _read_json(outdir / MARKER)
    if recorded is None:
        return f"{', '.join(present)} left by an unknown configuration"
    if recorded != ident:
        changed = sorted(k for k in set(recorded) | set(ident) if recorded.get(k) != ident.get(k))
        return f"results of another configuration (differs in {', '.join(changed)})"
    status = _read_json(outdir / "status.json") or {}
    if status.get("status") == "ok" or (outdir / "embeddings.h5").exists():
        return "a finished result of an earlier run (a measurement job measures again)"
    return None


def prepare_outdir(cfg) -> str | None:
    """Clear stale results from `cfg.outdir`, record this configuration; return what was cleared and why."""
    outdir = Path(cfg.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"-o {outdir}: exists and is not a directory")
    ident = identity(cfg)
    reason = stale_reason(outdir, ident)
    if reason:
        for name in OUTPUTS:
            path = outdir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    outdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(outdir / MARKER, ident)
    return reason
