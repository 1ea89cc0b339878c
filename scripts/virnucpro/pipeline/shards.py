"""Splitting one FASTA into shards for the workflow's `embed` target, and the record each shard job leaves.

The shards are contiguous ranges of the input, cut where the cumulative token count crosses k/K of the total,
so they cost about the same GPU time and gathering them is concatenation in input order. The input is read
twice, streaming (once to validate and count tokens, once to write): memory holds 12 bytes per record (its token
count and a 64-bit hash of its id for the duplicate check), never the sequences. `manifest.json` records what
the gather step verifies: the input's sha256, each shard's index range, sizes, file sha256 and a digest of its
ids in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from array import array
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from virnucpro.data.fasta import MAX_RESIDUES, iter_records, too_long
from virnucpro.data.packing import check_budget
from virnucpro.data.windows import embedded_tokens
from virnucpro.errors import UserError
from virnucpro.pipeline.input_check import file_sha256
from virnucpro.pipeline.output import FINAL_FILE, MANIFEST, PARTIAL_DIR, OutdirLock, write_json_atomic
from virnucpro.utils.phases import process_start_epoch

MANIFEST_FORMAT = "virnucpro-embed-shards/1"
ATTEMPTS = "attempts.jsonl"
FINISHED_DIR = ".finished"  # a hard link to the last finished embeddings and what made them
MADE_BY = "made_by.json"


def id_hash(rid: str) -> int:
    return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")


def cut_points(tokens: np.ndarray, shards: int) -> list[int]:
    """The first record index of each shard: the record boundary nearest to k/K of the cumulative token count,
    moved only as far as it takes for every shard to hold at least one record."""
    n = len(tokens)
    before = np.concatenate(([0], np.cumsum(tokens, dtype=np.int64)[:-1]))
    total = int(before[-1] + tokens[-1])
    starts = [0]
    for k in range(1, shards):
        target = total * k / shards
        i = int(np.searchsorted(before, target))  # before[i - 1] < target <= before[i]
        if i == n or target - before[i - 1] < before[i] - target:
            i -= 1
        starts.append(min(max(i, starts[-1] + 1), n - (shards - k)))
    return starts


def _first_pass(
    path: Path, window_overlap: int | None, refuse_long: bool, token_budget: int | None = None
) -> tuple[np.ndarray, str, str]:
    """Token counts (BOS/EOS included, as the engine will embed them) and the input's sha256; duplicate ids
    refused, and with `refuse_long` (the shard jobs run --long-sequences error) a sequence over the model's
    window too, and with `token_budget` (the shard jobs' budget) a sequence or window that cannot fit it: here,
    before any shard job spends GPU time (and Slurm retries it), not by the one job that holds it."""
    digest, ids_digest = hashlib.sha256(), hashlib.sha256()
    lengths, hashes = array("q"), array("Q")
    for line, rid, seq in iter_records(path, digest):
        if refuse_long and len(seq) > MAX_RESIDUES:
            raise too_long(path, rid, line, len(seq), "engine.long_sequences is error: set it to truncate or chunk")
        lengths.append(len(seq))
        hashes.append(id_hash(rid))
        ids_digest.update(rid.encode() + b"\n")
    if not lengths:
        raise UserError(f"{path}: empty FASTA file (no '>' records)")
    _refuse_duplicates(path, np.frombuffer(hashes, dtype=np.uint64))
    residues = np.frombuffer(lengths, dtype=np.int64)
    capped = np.minimum(residues, MAX_RESIDUES)  # a truncated sequence, or the longest window of a chunked one
    if token_budget is not None:  # records numbered in the whole input
        try:
            check_budget(capped, token_budget)
        except UserError as exc:
            raise UserError(f"{path}: {exc} (engine.token_budget)") from None
    if window_overlap is None:  # the shard jobs truncate long sequences to the model window
        residues = capped
    return embedded_tokens(residues, window_overlap), digest.hexdigest(), ids_digest.hexdigest()


def _refuse_duplicates(path: Path, hashes: np.ndarray) -> None:
    """A shard job sees only its shard, so ids repeated across shards are caught here (hash, then exact)."""
    values, counts = np.unique(hashes, return_counts=True)
    suspects = set(values[counts > 1].tolist())
    if not suspects:
        return
    seen: dict[str, int] = {}
    for line, rid, _ in iter_records(path, hashlib.sha256()):
        if id_hash(rid) in suspects:
            if rid in seen:
                raise UserError(f"{path}: duplicate record id '{rid}' (lines {seen[rid]} and {line})")
            seen[rid] = line


def _write_shards(path: Path, tokens: np.ndarray, starts: list[int], outdir: Path) -> tuple[list[dict], str]:
    """The second pass: `outdir/{k}.fasta` for each range of `starts`, and their manifest rows; returns them with
    the input's sha256 as read this time (the caller compares it with the first pass's)."""
    outdir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    records = iter_records(path, digest)
    rows = []
    for k in range(len(starts) - 1):
        file = outdir / f"{k}.fasta"
        file_digest, shard_ids = hashlib.sha256(), hashlib.sha256()
        tmp = file.with_name(file.name + ".tmp")
        with open(tmp, "wb") as fh:
            for _ in range(starts[k], starts[k + 1]):
                _, rid, seq = next(records)
                text = b">" + rid.encode() + b"\n" + seq + b"\n"
                fh.write(text)
                file_digest.update(text)
                shard_ids.update(rid.encode() + b"\n")
        tmp.replace(file)
        rows.append(
            {
                "index": k,
                "fasta": str(file),
                "first": starts[k],
                "last": starts[k + 1] - 1,
                "sequences": starts[k + 1] - starts[k],
                "tokens": int(tokens[starts[k] : starts[k + 1]].sum()),
                "sha256": file_digest.hexdigest(),
                "ids_sha256": shard_ids.hexdigest(),
            }
        )
    for _ in records:  # drain: the digest covers the whole input
        pass
    return rows, digest.hexdigest()


def split_fasta(
    path: Path,
    shards: int,
    outdir: Path,
    manifest_path: Path,
    window_overlap: int | None = None,
    refuse_long: bool = False,
    token_budget: int | None = None,
) -> dict:
    """Write `outdir/{k}.fasta` for k < `shards` and the manifest; return the manifest. `window_overlap`: the
    shard jobs embed long sequences in windows (--long-sequences chunk), which the token balance counts;
    `refuse_long`: they refuse them (--long-sequences error), so the split does first; `token_budget`: the shard
    jobs' budget, which every sequence must fit (else refused here too)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: not a regular file (the split reads the input twice; save a pipe to a file)")
    stat = os.stat(path)
    tokens, sha, ids_sha = _first_pass(path, window_overlap, refuse_long, token_budget)
    if shards > len(tokens):
        raise UserError(f"{path}: {len(tokens)} sequences cannot make {shards} shards (embed.shards)")
    starts = cut_points(tokens, shards) + [len(tokens)]
    rows, second_sha = _write_shards(path, tokens, starts, outdir)
    if second_sha != sha:
        raise UserError(f"{path}: the file changed while it was being split; run the split again")
    manifest = {
        "format": MANIFEST_FORMAT,
        "input": str(path),
        "input_sha256": sha,
        "input_size": stat.st_size,  # with the modification time: `input_check.input_changed_unseen`'s cheap test
        "input_mtime_ns": stat.st_mtime_ns,
        "ids_sha256": ids_sha,
        "num_sequences": len(tokens),
        "total_tokens": int(tokens.sum(dtype=np.int64)),
        "max_residues": MAX_RESIDUES,
        "window_overlap": window_overlap,  # None: long sequences counted truncated
        "shards": rows,
    }
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest_path, manifest)
    return manifest


def prepare_shard_outdir(outdir: Path, fasta: Path, shard_sha256: str) -> str | None:
    """Before a shard job's attempt: remove checkpoints of another input than `fasta` (whose sha256 the caller
    has: `what_made`) left before the split was redone over a changed input (never resumable, and `embed` would
    refuse to start); keep those of the same input, so the job resumes. The attempts log is kept whatever
    happens: every attempt spent GPU time on this shard."""
    try:
        recorded = json.loads((outdir / PARTIAL_DIR / MANIFEST).read_text()).get("input_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is None or recorded == shard_sha256:
        return None
    with OutdirLock(outdir):  # refused, naming it, while another run writes there
        shutil.rmtree(outdir / PARTIAL_DIR)
    return f"removed {outdir / PARTIAL_DIR}: checkpoints of another input than {fasta} (an earlier split)"


def discard_other_runs(outdir: Path) -> None:
    """A shard directory's results of other settings (checkpoints, a finished file): the workflow owns the
    directory and reran the job for its new settings, so they are discarded rather than refused."""
    with OutdirLock(outdir):
        shutil.rmtree(outdir / PARTIAL_DIR, ignore_errors=True)
        shutil.rmtree(outdir / FINISHED_DIR, ignore_errors=True)
        (outdir / FINAL_FILE).unlink(missing_ok=True)


# --- a finished shard kept beside its declared output, so that an unchanged shard is never embedded twice -----


def what_made(fasta: Path, settings: dict) -> dict:
    """What decides a shard's embeddings: its file's content and the job's settings (`made["key"]` digests them)."""
    made = {"shard_sha256": file_sha256(fasta), "settings": settings}
    return {**made, "key": hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16]}


def remember_finished(outdir: Path, made: dict) -> None:
    """After a shard job: a hard link to its embeddings (no copy: it costs no space while the output exists)
    and what made them, in a directory Snakemake does not know. Snakemake deletes a job's outputs before it
    reruns the job (a re-split rewrites every shard file, so every shard's input is newer); `restore_finished`
    then puts the same file back when the shard's input and settings did not change."""
    keep = outdir / FINISHED_DIR
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    try:
        os.link(outdir / FINAL_FILE, keep / FINAL_FILE)
    except OSError:  # a file system without hard links: nothing will be reused
        shutil.rmtree(keep, ignore_errors=True)
        return
    write_json_atomic(keep / MADE_BY, made)


def restore_finished(outdir: Path, fasta: Path, made: dict) -> str | None:
    """Before a shard job: relink the finished embeddings of this very shard input and settings (`embed` then
    checks their fingerprint and has nothing to do); drop them, freeing their space, when anything changed."""
    keep, final = outdir / FINISHED_DIR, outdir / FINAL_FILE
    if final.exists() or not (keep / MADE_BY).is_file():
        return None
    try:
        recorded = json.loads((keep / MADE_BY).read_text())
    except ValueError:
        recorded = None
    if recorded != made:
        shutil.rmtree(keep, ignore_errors=True)
        return None
    os.link(keep / FINAL_FILE, final)
    return f"{fasta}: unchanged since this shard finished with the same settings: its embeddings are reused"


# --- a shard job's attempts: every try (a cancelled or preempted one too) counts in the GPU-hours -------------


def _append(path: Path, entry: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def attempt(outdir: Path, gpus: int, key: str | None = None):
    """Record this attempt's start and end (exit code, wall seconds, Slurm job id) in `OUTDIR/attempts.jsonl`,
    with `key` (`what_made`: which shard content and settings it worked for, so that the report can tell the
    attempts behind the current result from those of earlier inputs or settings).

    The file is no declared output of the workflow, so Snakemake keeps it across retries. A SIGKILLed attempt
    leaves its start line only. Yields a dict whose `exit_code` the caller sets.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    entry = {
        "key": key,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": platform.node(),
        "gpus": gpus,
        "started": process_start_epoch(),  # the interpreter's start-up and imports are the job's time too
    }
    _append(outdir / ATTEMPTS, {"event": "start", **entry})
    state = {"exit_code": 1}
    try:
        yield state
    except BaseException as exc:
        state["exit_code"] = getattr(exc, "exit_code", None) or getattr(exc, "code", None) or 1
        raise
    finally:
        _append(
            outdir / ATTEMPTS,
            {"event": "end", **entry, "exit_code": state["exit_code"], "wall_seconds": time.time() - entry["started"]},
        )


def read_attempts(outdir: Path) -> list[dict]:
    """One dict per attempt: start fields, plus `exit_code` and `wall_seconds` when it recorded its end."""
    path = outdir / ATTEMPTS
    if not path.is_file():
        return []
    attempts: list[dict] = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if entry.get("event") == "start":
            attempts.append({k: v for k, v in entry.items() if k != "event"} | {"exit_code": None})
        elif attempts and attempts[-1]["started"] == entry.get("started"):
            attempts[-1].update(exit_code=entry.get("exit_code"), wall_seconds=entry.get("wall_seconds"))
    return attempts


def write_job_record(record: Path, outdir: Path, fasta: Path, settings: dict) -> dict:
    """The shard job's declared output, written last: its status summary, attempts and settings."""
    status = json.loads((outdir / "status.json").read_text())
    summary = status.get("summary") or {}
    payload = {
        "shard_fasta": str(fasta),
        "outdir": str(outdir),
        "settings": settings,
        "sequences": summary.get("total_sequences"),
        "job_wall_seconds": summary.get("job_wall_seconds"),
        "phases": summary.get("phases"),
        "resumed_sequences": summary.get("resumed_sequences"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "attempts": read_attempts(outdir),
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, payload)
    return payload
