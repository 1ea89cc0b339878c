"""The command line under what a demanding user tries (issue 18): one line and the documented exit code, never a
traceback; signals, memory limits and a killed launcher end cleanly. FASTA formats are in test_fasta.py."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from virnucpro import cli
from virnucpro.data.fasta import write_fasta
from virnucpro.data.synthetic import make_sequences
from virnucpro.errors import UserError
from virnucpro.models.weights import load_checkpoint, resolve_weights


def run_main(capsys, *argv) -> tuple[int, list[str]]:
    """`virnucpro ARGV` in this process: (exit code, non-empty stderr lines)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def cli_cmd(*argv) -> list[str]:
    return [sys.executable, "-m", "virnucpro.cli", *map(str, argv)]


def assert_one_line(code: int, lines: list[str], expected_code: int, *fragments: str) -> None:
    assert code == expected_code, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    for fragment in fragments:
        assert fragment in lines[0], lines


@pytest.fixture
def small_fasta(tmp_path) -> Path:
    path = tmp_path / "reads.fa"
    write_fasta(path, *make_sequences(20, 1, "short-reads"))
    return path


# --- options: refused before anything runs, in one line --------------------------------------------------------

BAD_OPTIONS = {
    "target sequences 0": (["--target-sequences", "0"], "--target-sequences: must be a positive integer"),
    "target sequences negative": (["--target-sequences", "-5"], "--target-sequences: must be a positive integer"),
    "progress interval negative": (["--progress-interval", "-1"], "--progress-interval: must be a number >= 0"),
    "progress interval nan": (["--progress-interval", "nan"], "--progress-interval: must be a number >= 0"),
    "progress interval inf": (["--progress-interval", "inf"], "--progress-interval: must be a number >= 0"),
    "seed negative": (["--seed", "-1"], "--seed: must be an integer >= 0"),
    "token budget text": (["--token-budget", "16k"], "--token-budget: must be a positive integer, not '16k'"),
    "device name": (["--device", "gpu"], "--device: must be auto, cpu, cuda or cuda:N"),
    "device index": (["--device", "cuda:x"], "--device: must be auto, cpu, cuda or cuda:N"),
    "unknown option": (["--tokens", "5"], "unrecognized arguments: --tokens 5"),
    "precision": (["--precision", "fp4"], "argument --precision: invalid choice: 'fp4'"),
    "empty checkpoint": (["--checkpoint", ""], "argument --checkpoint: must not be empty"),  # "$CKPT" unset
    "empty model": (["--model", " "], "argument --model: must not be empty"),
}


@pytest.mark.parametrize("name", sorted(BAD_OPTIONS))
def test_bad_embed_option_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, small_fasta, name):
    extra, message = BAD_OPTIONS[name]
    out = tmp_path / "out"
    code, lines = run_main(
        capsys,
        "embed",
        small_fasta,
        "-o",
        out,
        "--random-weights",
        "--model",
        "esm2_t6_8M_UR50D",
        "--device",
        "cpu",
        *extra,
    )
    assert_one_line(code, lines, 2, message, "--help)")
    assert not out.exists()


def test_missing_required_option_is_one_line(capsys, small_fasta):
    assert_one_line(*run_main(capsys, "embed", small_fasta), 2, "the following arguments are required: -o/--outdir")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["best-config", "r.json", "-o", "b.json", "--min-packing", "2"], "--min-packing: must be a number between 0"),
        (["scaling", "r.json", "-o", "s.json", "--min-efficiency", "0"], "--min-efficiency: must be a percentage"),
        (["make-fasta", "-o", "x.fa", "--num-sequences", "3", "--seed", "-1"], "--seed: must be an integer >= 0"),
        (["make-fasta", "-o", "x.fa", "--num-sequences", "many"], "--num-sequences: must be a positive integer"),
        (["sample", "x.fa", "--info", "i.json", "-n", "0"], "--num-sequences: must be a positive integer"),
    ],
)
def test_bad_numbers_of_the_other_commands(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert_one_line(*run_main(capsys, *argv), 2, message)
    assert not list(tmp_path.iterdir())


def test_unknown_model_name_with_a_checkpoint_is_refused(capsys, tmp_path, small_fasta, tiny_checkpoint):
    code, lines = run_main(
        capsys,
        "embed",
        small_fasta,
        "-o",
        tmp_path / "o",
        "--checkpoint",
        tiny_checkpoint,
        "--model",
        "esm2_t33_650M",
        "--device",
        "cpu",
    )
    assert_one_line(code, lines, 2, "unknown model 'esm2_t33_650M'")
    assert not (tmp_path / "o").exists()


# --- make-fasta output paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, message",
    [
        ("dir", "is a directory; give the FASTA file's name"),
        ("", "is a directory; give the FASTA file's name"),  # -o '' is the current directory
        ("afile/x.fa", "a parent of it is a file, not a directory"),
    ],
)
def test_make_fasta_output_that_cannot_be_a_file(capsys, tmp_path, monkeypatch, where, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "afile").write_text("keep me")
    assert_one_line(*run_main(capsys, "make-fasta", "-o", where, "--num-sequences", "3"), 2, message)
    assert (tmp_path / "afile").read_text() == "keep me" and not list((tmp_path / "dir").iterdir())


# --- the workflow's small commands given missing or foreign files ----------------------------------------------


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "missing": tmp_path / "missing.json",
        "dir": tmp_path / "adir",
        "truncated": tmp_path / "trunc.json",
        "list": tmp_path / "list.json",
        "foreign": tmp_path / "foreign.json",
    }
    files["dir"].mkdir()
    files["truncated"].write_text('{"label": "x", ')
    files["list"].write_text("[1, 2]")
    files["foreign"].write_text('{"hello": 1}')
    return files


JSON_CASES = {
    "missing": "no such",
    "dir": "is a directory",
    "truncated": "not valid JSON",
    "list": "not a",
    "foreign": "not a",
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
@pytest.mark.parametrize("command", ["best-config", "scaling", "merge-telemetry", "report"])
def test_json_commands_refuse_missing_or_foreign_files(capsys, tmp_path, command, case):
    bad = _files(tmp_path)[case]
    out = tmp_path / "out.json"
    argv = (
        [command, bad, "-o", out]
        if command != "report"
        else [command, bad, "--input-info", bad, "--config", bad, "--scaling", bad, "--html", tmp_path / "r.html"]
    )
    code, lines = run_main(capsys, *argv)
    assert_one_line(code, lines, 2, str(bad), JSON_CASES[case])
    assert not out.exists() and not (tmp_path / "r.html").exists()


def test_report_refuses_a_bad_input_info_after_good_results(capsys, tmp_path):
    files = _files(tmp_path)
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"label": "a", "group": "baseline", "status": "failed", "params": {}}))
    code, lines = run_main(
        capsys,
        "report",
        result,
        "--input-info",
        files["truncated"],
        "--config",
        files["foreign"],
        "--scaling",
        files["foreign"],
        "--html",
        tmp_path / "r.html",
    )
    assert_one_line(code, lines, 2, "trunc.json: not valid JSON", "--input-info")


def _report_inputs(tmp_path: Path) -> dict[str, Path]:
    """A failed result and side files of the right kinds: the smallest report that renders."""
    files = {name: tmp_path / f"{name}.json" for name in ("result", "info", "config", "scaling")}
    files["result"].write_text(json.dumps({"label": "a", "group": "baseline", "status": "failed", "params": {}}))
    files["info"].write_text(json.dumps({"source": "synthetic", "num_sequences": 1, "sha256": "0" * 64}))
    files["config"].write_text(json.dumps({"model": {}, "engine": {}}))
    files["scaling"].write_text(json.dumps({"rows": [], "projections": []}))
    return files


@pytest.mark.parametrize("option", ["--input-info", "--config", "--scaling", "--best", "--peers", "--compare-to"])
@pytest.mark.parametrize("content", ["{}", "result"])
def test_report_refuses_a_side_file_of_another_kind(capsys, tmp_path, option, content):
    """`{}` or a result JSON where the input info, config, scaling, best, peers or previous summary belongs was
    rendered as a report with blank provenance (exit 0); now exit 2 naming the file and what it lacks."""
    files = _report_inputs(tmp_path)
    wrong = files["result"] if content == "result" else tmp_path / "empty.json"
    wrong.write_text(files["result"].read_text() if content == "result" else "{}")
    sides = {"--input-info": files["info"], "--config": files["config"], "--scaling": files["scaling"], option: wrong}
    argv = ["report", files["result"], *(str(x) for kv in sides.items() for x in kv), "--html", tmp_path / "r.html"]
    code, lines = run_main(capsys, *argv)
    assert_one_line(code, lines, 2, f"{wrong}: not a {option} file (no ")
    assert not (tmp_path / "r.html").exists()


def test_report_writes_all_of_its_files_or_none(capsys, tmp_path):
    """A --summary that is a directory used to fail after report.html was written (exit 2, half a report)."""
    files = _report_inputs(tmp_path)
    (tmp_path / "d").mkdir()
    argv = ["report", files["result"], "--input-info", files["info"], "--config", files["config"]]
    argv += ["--scaling", files["scaling"], "--html", tmp_path / "r.html", "--text", tmp_path / "r.txt"]
    code, lines = run_main(capsys, *argv, "--summary", tmp_path / "d")
    assert_one_line(code, lines, 2, "is a directory")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.txt").exists()
    assert run_main(capsys, *argv, "--summary", tmp_path / "s.json")[0] == 0
    assert all((tmp_path / n).is_file() for n in ("r.html", "r.txt", "s.json"))


def test_json_command_output_is_a_directory(capsys, tmp_path):
    result = tmp_path / "result.json"
    result.write_text(
        json.dumps(
            {"label": "a", "group": "production", "status": "failed", "reason": "x", "params": {"world_size": 1}}
        )
    )
    (tmp_path / "out").mkdir()
    assert_one_line(*run_main(capsys, "scaling", result, "-o", tmp_path / "out"), 2, "out")


# --- FASTA problems through the CLI ---------------------------------------------------------------------------


def test_nul_byte_in_an_id_is_exit_2_naming_record_and_problem(capsys, tmp_path):
    fasta = tmp_path / "nul.fa"
    fasta.write_bytes(b">ok\nMKV\n>bad\x00id\nMKV\n")
    code, lines = run_main(
        capsys,
        "embed",
        fasta,
        "-o",
        tmp_path / "o",
        "--random-weights",
        "--model",
        "esm2_t6_8M_UR50D",
        "--device",
        "cpu",
    )
    assert_one_line(code, lines, 2, "record id 'bad\\x00id' on line 3 contains a NUL byte")
    assert not (tmp_path / "o").exists()


def test_fasta_from_stdin(tmp_path):
    info = tmp_path / "info.json"
    res = subprocess.run(
        cli_cmd("sample", "-", "--info", info), input=">a\rMKV\r>b\rWW\r", capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(info.read_text())["num_sequences"] == 2 and json.loads(info.read_text())["path"] == "<stdin>"


# --- Ctrl-C ----------------------------------------------------------------------------------------------------

CTRL_C_TWICE = """
import signal, sys, time
from virnucpro import cli
from virnucpro.pipeline import runner

def run_embed(cfg, progress_stream=None, stop=None):  # stands in for a job mid-loop: Ctrl-C, then Ctrl-C again
    cfg.outdir.mkdir(parents=True)
    signal.raise_signal(signal.SIGINT)
    assert stop.is_set()
    signal.raise_signal(signal.SIGINT)
    time.sleep(30)

runner.run_embed = run_embed
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ctrl_c_twice_exits_130_in_one_line(tmp_path, small_fasta):
    out = tmp_path / "out"
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            CTRL_C_TWICE,
            "embed",
            str(small_fasta),
            "-o",
            str(out),
            "--random-weights",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in res.stderr.splitlines() if line.strip() and "SIGINT received" not in line]
    assert res.returncode == 130, res.stderr
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in res.stderr, res.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"] == "interrupted" and status["resumable"]


# --- host memory limit -----------------------------------------------------------------------------------------


def test_host_memory_limit_is_exit_3_not_a_traceback(tmp_path, small_fasta, tiny_checkpoint):
    """Under `ulimit -v` Python starts but torch cannot be mapped: out of memory, exit 3.

    The limit sits below libtorch_cpu.so's own mapping (434 MB in torch 2.13's CPU build) and well above what
    Python, numpy and OpenBLAS need (OpenBLAS gave up, exit 1, at 100 MB): the import fails at one place,
    cleanly. At 600 MB it failed after that library, in a later dlopen, where glibc once aborted the process
    ("cannot allocate memory for thread-local data", exit 127: no handler runs)."""
    libtorch = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    limit = 300 * 1024**2
    assert libtorch.stat().st_size > limit + 100 * 1024**2, "the limit must fall inside libtorch_cpu's mapping"

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    res = subprocess.run(
        cli_cmd("embed", small_fasta, "-o", tmp_path / "o", "--checkpoint", tiny_checkpoint, "--device", "cpu"),
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=120,
    )
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr and any("out of memory" in line for line in lines), res.stderr


def test_model_that_does_not_fit_host_memory_is_exit_3(tmp_path, small_fasta):
    """torch's CPU allocator failing while the weights are allocated (a RuntimeError, not a MemoryError) is out
    of memory: exit 3 and status.json's reason OOM; it was a traceback and exit 1. The libraries are mapped
    first, then 40 MB of headroom is less than esm2_t12_35M's 136 MB of fp32 weights."""
    out = tmp_path / "o"
    code = (
        "import re, resource, sys\n"
        "import h5py, torch\n"
        "from virnucpro import cli\n"
        "from virnucpro.pipeline import runner\n"
        "size = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 40 * 1024**2,) * 2)\n"
        f"sys.exit(cli.main(['embed', '{small_fasta}', '-o', '{out}', '--random-weights', "
        "'--model', 'esm2_t12_35M_UR50D', '--device', 'cpu']))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    noise = ("[embedding", "WARNING")  # progress and the random-weights warning
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith(noise)]
    assert_one_line(res.returncode, lines, 3, "out of memory")
    status = json.loads((out / "status.json").read_text())
    assert status["reason"] == "OOM" and "can't allocate memory" in status["error"], status


def test_out_of_memory_line_when_even_its_formatting_fails():
    """The handler itself runs out of memory (print() raised MemoryError under `ulimit -v`): still exit 3 and
    one line, the preallocated one."""
    code = (
        "from virnucpro import cli\n"
        "class E(MemoryError):\n    def __str__(self): raise MemoryError\n"
        "cli._exit_out_of_memory(E())"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert (res.returncode, res.stderr) == (3, cli.OOM_LINE)


def test_a_lost_memory_error_is_out_of_memory_only_under_a_memory_limit(monkeypatch):
    """CPython 3.11 can lose a MemoryError under `ulimit -v` (SystemError: error return without exception set):
    out of memory there; without a limit the same SystemError is a bug (exit 1, traceback)."""
    lost = SystemError("error return without exception set")
    monkeypatch.setattr(cli, "memory_limited", lambda: True)
    assert cli._host_out_of_memory(lost) and not cli._host_out_of_memory(SystemError("something else"))
    monkeypatch.setattr(cli, "memory_limited", lambda: False)
    assert not cli._host_out_of_memory(lost)


def test_a_thread_that_cannot_start_is_out_of_memory_only_under_a_memory_limit(
    capsys, tmp_path, small_fasta, tiny_checkpoint, monkeypatch
):
    """Under `ulimit -v` 740-800 MB about 1 `embed` in 20 ended in "RuntimeError: can't start new thread" (the
    checkpoint writer's stack could not be mapped) and a traceback: out of memory there, exit 3, status OOM.
    Without a limit it stays a bug (it may be a process-count limit)."""
    from virnucpro import errors
    from virnucpro.pipeline import output

    no_thread = RuntimeError("can't start new thread")

    def writer(*args, **kwargs):
        raise no_thread

    monkeypatch.setattr(output, "AsyncChunkWriter", writer)
    monkeypatch.setattr(errors, "memory_limited", lambda: True)
    args = ["embed", small_fasta, "--checkpoint", tiny_checkpoint, "--device", "cpu", "-o"]
    code, lines = run_main(capsys, *args, tmp_path / "o")
    lines = [line for line in lines if not line.startswith(("WARNING", "[embed"))]
    assert_one_line(code, lines, 3, "out of memory (RuntimeError)")
    status = json.loads((tmp_path / "o" / "status.json").read_text())
    assert (status["reason"], status["error"]) == ("OOM", "can't start new thread")
    monkeypatch.setattr(cli, "memory_limited", lambda: True)
    assert cli._host_out_of_memory(no_thread) and not cli._host_out_of_memory(RuntimeError("other"))
    monkeypatch.setattr(errors, "memory_limited", lambda: False)
    monkeypatch.setattr(cli, "memory_limited", lambda: False)
    assert errors.out_of_memory(no_thread) is None and not cli._host_out_of_memory(no_thread)
    with pytest.raises(RuntimeError, match="can't start new thread"):  # a bug: exit 1 and its traceback
        cli.main([str(a) for a in (*args, tmp_path / "p")])


def test_a_rank_out_of_memory_is_exit_3_with_its_peak_in_status_json(capsys, tmp_path, small_fasta, monkeypatch):
    """The job around the ranks and the ranks share one out-of-memory test (errors.out_of_memory)."""
    from virnucpro.errors import out_of_memory
    from virnucpro.pipeline import runner
    from virnucpro.pipeline.launcher import RankOutOfMemory

    def run_embed(cfg, progress_stream=None, stop=None):
        raise RankOutOfMemory("rank 1: OutOfMemoryError: CUDA out of memory\ndetails", 71.5)

    monkeypatch.setattr(runner, "run_embed", run_embed)
    code, lines = run_main(capsys, "embed", small_fasta, "-o", tmp_path / "o", "--random-weights", "--device", "cpu")
    assert_one_line(code, lines, 3, "out of memory (RankOutOfMemory)")
    status = json.loads((tmp_path / "o" / "status.json").read_text())
    assert (status["status"], status["reason"], status["peak_memory_gb"]) == ("failed", "OOM", 71.5)
    assert status["error"] == "rank 1: OutOfMemoryError: CUDA out of memory" and status["config"]["device"] == "cpu"
    assert out_of_memory(MemoryError("a\nb")) == ("MemoryError: a", None) and out_of_memory(ValueError()) is None


# --- checkpoints -----------------------------------------------------------------------------------------------


def test_legacy_format_checkpoint_loads(tmp_path, tiny_checkpoint):
    legacy = tmp_path / "esm2_legacy.pt"
    torch.save(torch.load(tiny_checkpoint, weights_only=False), legacy, _use_new_zipfile_serialization=False)
    a, b = load_checkpoint(tiny_checkpoint), load_checkpoint(legacy)
    assert a.spec == b.spec and a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_checkpoint_named_after_no_model_says_what_it_is(tmp_path, tiny_checkpoint, caplog):
    odd = tmp_path / "my_weights.pt"
    odd.write_bytes(tiny_checkpoint.read_bytes())
    with caplog.at_level("WARNING"):
        w = resolve_weights(None, str(odd), False, 0)
    assert w.provenance["model"] == "my_weights"
    assert "no published size (2 layers, 64-dim, 4 heads)" in caplog.text


def test_checkpoint_named_after_another_model_is_recorded_as_what_it_holds(tmp_path, tiny_checkpoint, caplog):
    liar = tmp_path / "esm2_t33_650M_UR50D.pt"
    liar.write_bytes(tiny_checkpoint.read_bytes())
    with caplog.at_level("WARNING"):
        w = resolve_weights(None, str(liar), False, 0)
    assert w.provenance["model"] == "custom ESM-2 (2 layers, 64-dim, 4 heads)"
    assert "its name says esm2_t33_650M_UR50D" in caplog.text


def _rewrite(src: Path, dst: Path, edit) -> Path:
    data = torch.load(src, weights_only=False)
    edit(data)
    torch.save(data, dst)
    return dst


@pytest.mark.parametrize(
    "case, message",
    [
        ("esm1b weights", "learned positional embeddings: an ESM-1"),
        ("v1 format", "a fair-esm v1 checkpoint"),
        ("cfg disagrees", "where an ESM-2 of 2 layers x 32 (its cfg) has"),
    ],
)
def test_checkpoint_that_is_not_esm2_is_refused(tmp_path, tiny_checkpoint, case, message):
    def edit(data):
        if case == "esm1b weights":
            data["model"]["encoder.sentence_encoder.embed_positions.weight"] = torch.zeros(1026, 64)
        elif case == "v1 format":
            data["args"] = data.pop("cfg")["model"]
        else:
            data["cfg"]["model"].encoder_embed_dim = 32

    bad = _rewrite(tiny_checkpoint, tmp_path / "esm2_bad.pt", edit)
    with pytest.raises(UserError, match=re.escape(message)):
        load_checkpoint(bad)


# --- a killed launcher takes its ranks with it -----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_launcher_stops_its_ranks(tmp_path, tiny_checkpoint):
    fasta = tmp_path / "reads.fa"
    write_fasta(fasta, *make_sequences(12000, 2, "short-reads"))  # a minute of work per rank: they must not finish
    outdir = tmp_path / "out"
    proc = subprocess.Popen(
        cli_cmd(
            "embed",
            fasta,
            "-o",
            outdir,
            "--checkpoint",
            tiny_checkpoint,
            "--device",
            "cpu",
            "--world-size",
            "2",
            "--token-budget",
            "1024",
            "--num-workers",
            "0",
            "--checkpoint-every",
            "20",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while len({p.name.split("_")[1] for p in (outdir / ".partial").glob("chunk_r*.h5")}) < 2:  # both embedding
            assert proc.poll() is None and time.monotonic() < deadline
            ranks = _children(proc.pid) or ranks
            time.sleep(0.2)
        ranks = _children(proc.pid)
        assert len(ranks) == 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(r) for r in ranks) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(r) for r in ranks), "ranks outlived their launcher"
    finally:
        for pid in ranks:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- a DataLoader worker that dies (the OOM killer's SIGKILL): one line, exit 1, never a hang ------------------

#: `virnucpro embed` with one loader worker SIGKILLed once batch 5 is recorded (chunks of earlier batches are on
#: their way to disk); prints the victim's pid, then every worker's.
KILL_A_WORKER = """
import multiprocessing, os, signal, sys
from virnucpro import cli
from virnucpro.pipeline import runner

finish = runner.BatchRecorder.finish

def finish_then_kill(self, p):
    finish(self, p)
    if p.k == 5:
        workers = multiprocessing.active_children()
        print(workers[0].pid, " ".join(str(w.pid) for w in workers), flush=True)
        os.kill(workers[0].pid, signal.SIGKILL)

runner.BatchRecorder.finish = finish_then_kill
sys.exit(cli.main(sys.argv[1:]))
"""


def embed_args(fasta, outdir, checkpoint) -> list:
    return ["embed", fasta, "-o", outdir, "--checkpoint", checkpoint, "--device", "cpu", "--precision", "fp32"] + [
        "--num-workers", "2", "--token-budget", "512", "--checkpoint-every", "20"
    ]  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_loader_worker_ends_the_job_in_one_line_and_a_rerun_resumes(capsys, tmp_path, tiny_checkpoint):
    """Before: the job hung at exit joining the other worker (6 of 20 kills) or ended in a traceback."""
    from virnucpro.pipeline.output import PARTIAL_DIR, scan_partial

    fasta = tmp_path / "reads.fa"
    write_fasta(fasta, *make_sequences(300, 3, "short-reads"))  # about 30 batches: the kill lands mid-run
    outdir = tmp_path / "out"
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", KILL_A_WORKER, *map(str, embed_args(fasta, outdir, tiny_checkpoint))],
        capture_output=True,
        text=True,
        timeout=60,  # the hang this guards against never ends
    )
    seconds = time.monotonic() - t0
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "[embed"))]
    victim, *workers = map(int, res.stdout.split())
    assert_one_line(res.returncode, lines, 1, f"(pid {victim}) was killed by SIGKILL", "out-of-memory")
    assert re.match(r"virnucpro: error: DataLoader worker [01] \(pid", lines[0]), lines  # active_children: a set
    assert "--num-workers" in lines[0] and "rerun the same command to resume" in lines[0]
    assert seconds < 30, seconds
    assert len(workers) == 2 and not any(map(_alive, workers)), "a loader worker outlived the job"
    status = json.loads((outdir / "status.json").read_text())
    assert (status["status"], status["reason"], status["resumable"]) == (
        "failed",
        "DataLoader worker was killed by SIGKILL",
        True,
    )
    kept = int(scan_partial(outdir / PARTIAL_DIR, 300).done.sum())
    assert 20 <= kept < 300, kept  # the chunks written before the death are kept

    code, lines = run_main(capsys, *embed_args(fasta, outdir, tiny_checkpoint))
    assert code == 0, lines
    assert json.loads((outdir / "status.json").read_text())["summary"]["resumed_sequences"] == kept
    code, _ = run_main(capsys, *embed_args(fasta, tmp_path / "clean", tiny_checkpoint))
    assert code == 0
    with h5py.File(tmp_path / "clean" / "embeddings.h5") as a, h5py.File(outdir / "embeddings.h5") as b:
        assert list(a["ids"][()]) == list(b["ids"][()])
        np.testing.assert_allclose(b["embeddings"][()], a["embeddings"][()], rtol=0, atol=1e-5)


#: `virnucpro embed` whose loader workers cannot send batch 3 to the main process: pickling it raises MemoryError,
#: as pickling a batch into shared memory did under ulimit -v 740 MB.
UNSENDABLE_BATCH = """
import sys
from virnucpro import cli
from virnucpro.data import loader

class Unsendable:
    def __reduce__(self):
        raise MemoryError

getitem = loader.PackedBatchDataset.__getitem__
loader.PackedBatchDataset.__getitem__ = lambda self, k: Unsendable() if k == 3 else getitem(self, k)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_batch_that_a_worker_cannot_send_ends_the_job_in_one_line(tmp_path, tiny_checkpoint):
    """Before: the worker printed the MemoryError and dropped the batch, and the main process waited for it
    forever (5 of 20 runs under ulimit -v 740 MB hung so)."""
    fasta = tmp_path / "reads.fa"
    write_fasta(fasta, *make_sequences(100, 3, "short-reads"))
    outdir = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-c", UNSENDABLE_BATCH, *map(str, embed_args(fasta, outdir, tiny_checkpoint))],
        capture_output=True,
        text=True,
        timeout=60,  # the hang this guards against never ends
    )
    lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith(("WARNING", "[embed"))]
    assert_one_line(res.returncode, lines, 1, "ran out of memory sending a batch: use fewer --num-workers")
    assert re.match(r"virnucpro: error: DataLoader worker [01] \(pid \d+\) ran out of memory", lines[0]), lines
    status = json.loads((outdir / "status.json").read_text())
    assert (status["status"], status["reason"], status["resumable"]) == (
        "failed",
        "DataLoader worker ran out of memory",
        True,
    )


#: A loader with our settings (its workers ignore SIGTERM) whose two workers hang in their second item.
STUCK_LOADER = """
import time
from virnucpro.data.loader import PackedBatchDataset, make_loader

class Stuck(PackedBatchDataset):
    def __getitem__(self, k):
        if k >= 2:
            time.sleep(60)
        return super().__getitem__(k)

loader = make_loader(Stuck([b"MKV"] * 8, [[i] for i in range(8)]), 2, 1, pin_memory=False)
"""


def _stuck_loader():
    scope: dict = {}
    exec(STUCK_LOADER, scope)
    return scope["loader"]


def _kill_quietly(pid: int) -> None:
    """SIGKILL a loader worker and wait until it is a zombie (not reaped), without torch's SIGCHLD handler: it
    would raise the death here, in the test, at any call."""
    from virnucpro.data.loader import _sigchld_ignored

    with _sigchld_ignored():
        os.kill(pid, signal.SIGKILL)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def test_close_workers_kills_workers_that_ignore_sigterm_and_names_the_dead_one():
    from virnucpro.data.loader import close_workers

    it = iter(_stuck_loader())
    next(it)
    workers = list(it._workers)
    _kill_quietly(workers[1].pid)
    t0 = time.monotonic()
    died = close_workers(it, failed=True)
    assert time.monotonic() - t0 < 3
    assert not any(w.is_alive() for w in workers)
    assert (died.worker_id, died.pid, died.signal_name) == (1, workers[1].pid, "SIGKILL")
    assert str(died).startswith(f"DataLoader worker 1 (pid {workers[1].pid}) was killed by SIGKILL, most likely")
    assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None)  # torch's handler is back
    assert close_workers(iter([]), failed=True) is None  # no workers (num_workers=0): nothing to do


def test_a_death_raised_into_the_close_of_the_workers_is_still_one_worker_died(monkeypatch):
    """torch's SIGCHLD handler can raise a worker's death again once the loop has failed, up to the first line
    of `close_workers` (2 in 80 kills ended in that traceback, exit 1): `stream_batches` calls it again."""
    from virnucpro.data.loader import WorkerDied
    from virnucpro.pipeline import runner

    it = iter(_stuck_loader())
    next(it)
    workers = list(it._workers)
    _kill_quietly(workers[0].pid)

    class Reset:  # the next batch fails as a fetch from the dead worker's resource sharer does
        _workers = workers
        _shutdown_workers = it._shutdown_workers

        def __iter__(self):
            return self

        def __next__(self):
            raise ConnectionResetError(104, "Connection reset by peer")

    close, calls = runner.close_workers, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(f"DataLoader worker (pid {workers[0].pid}) is killed by signal: Killed. ")
        return close(*args, **kwargs)

    monkeypatch.setattr(runner, "close_workers", interrupted)
    with pytest.raises(WorkerDied, match=r"^DataLoader worker 0 \(pid \d+\) was killed by SIGKILL"):
        runner.stream_batches(Reset(), 1, None, torch.device("cpu"), 0, None, None)
    assert len(calls) == 2 and not any(w.is_alive() for w in workers)


#: A loader with our settings whose batches say which `sys.excepthook` its worker has.
HOOK_LOADER = """
import sys
from virnucpro.data.loader import PackedBatchDataset, make_loader

class Hook(PackedBatchDataset):
    def __getitem__(self, k):
        return sys.excepthook.__name__

loader = make_loader(Hook([b"MKV"] * 2, [[0], [1]]), 1, 1, pin_memory=False)
"""


def test_a_worker_does_not_report_a_connection_the_main_process_dropped(capsys):
    """A surviving worker's resource-sharer thread printed a reset connection (the main process was interrupted
    mid-fetch by a death) around the job's one line: 4 in 80 kills."""
    from virnucpro.data.loader import _quiet_lost_connection

    scope: dict = {}
    exec(HOOK_LOADER, scope)
    assert list(scope["loader"]) == ["_quiet_lost_connection"] * 2
    for error in (ConnectionResetError("reset"), EOFError(), ValueError("a bug")):
        _quiet_lost_connection(type(error), error, None)
    err = capsys.readouterr().err
    assert "ValueError: a bug" in err and "reset" not in err and "EOFError" not in err


def test_a_worker_death_names_its_signal_or_exit_code():
    from virnucpro.data.loader import WorkerDied

    segv, glibc = WorkerDied(0, 7, -signal.SIGSEGV), WorkerDied(1, 8, 127)
    assert str(segv) == "DataLoader worker 0 (pid 7) was killed by SIGSEGV; checkpointed rows are kept: " + (
        "rerun the same command to resume"
    )
    assert glibc.how == "exited with code 127" and glibc.signal_name is None and "out-of-memory" not in str(glibc)


def test_exit_with_a_live_loader_does_not_hang():
    """multiprocessing's exit hook SIGTERMs the workers, which ignore it, and joined them forever: a process
    that ended while an iterator was alive (an exception's traceback kept it) hung instead of exiting."""
    code = STUCK_LOADER + "it = iter(loader)\nnext(it)\nraise RuntimeError('the job failed')\n"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert res.returncode == 1 and b"RuntimeError: the job failed" in res.stderr
    assert time.monotonic() - t0 < 20


# --- found trying more cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1])
def test_closed_terminal_or_slurm_warning_signal_flushes_like_sigterm(sig):
    from virnucpro.pipeline.preemption import StopFlag

    inherited = signal.signal(sig, signal.SIG_DFL)  # under nohup SIGHUP arrives ignored; start from the default
    try:
        with StopFlag() as stop:
            signal.raise_signal(sig)  # default action: the process would die here
            assert stop.is_set() and stop.signal_name == sig.name
    finally:
        signal.signal(sig, inherited)
    previous = signal.signal(sig, signal.SIG_IGN)  # as under nohup: the user's choice stands
    try:
        with StopFlag():
            assert signal.getsignal(sig) == signal.SIG_IGN
    finally:
        signal.signal(sig, previous)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("virnucpro ")


def test_sample_size_without_an_output_is_refused(capsys, small_fasta, tmp_path):
    code, lines = run_main(capsys, "sample", small_fasta, "-n", "5", "--info", tmp_path / "i.json")
    assert_one_line(code, lines, 2, "--num-sequences needs -o/--output")
    assert not (tmp_path / "i.json").exists()


def test_a_stop_during_start_up_says_so(capsys):
    """SIGTERM before `embed` installs its flushing handler: exit 75 (rerun) with a line, not silently."""
    with pytest.raises(SystemExit) as stopped:
        cli._stop_during_startup(signal.SIGTERM, None)
    assert stopped.value.code == 75
    assert capsys.readouterr().err == "virnucpro: stopped by SIGTERM while starting; rerun the same command\n"


@pytest.mark.parametrize(("command", "group"), [("scaling", "packing"), ("best-config", "production")])
def test_a_result_of_the_wrong_group_is_refused(capsys, tmp_path, command, group):
    """`scaling` measured a sweep point as a production run and `best-config` ranked a production run among
    the sweep points (exit 0); each names the file and what it is instead."""
    result = tmp_path / "r.json"
    result.write_text(json.dumps({"label": "a", "group": group, "status": "failed", "params": {"world_size": 1}}))
    code, lines = run_main(capsys, command, result, "-o", tmp_path / "out.json")
    assert_one_line(code, lines, 2, f"r.json: a '{group}' result, not a")
    assert not (tmp_path / "out.json").exists()


def test_analyse_run_refuses_a_negative_warm_up(capsys, tmp_path):
    code, lines = run_main(
        capsys, "analyse-run", tmp_path / "r.json", "-o", tmp_path / "o.json", "--warmup-seconds", "-1"
    )
    assert_one_line(code, lines, 2, "--warmup-seconds and --warmup-batches must be >= 0")
