"""Packed batches as tensors, produced by DataLoader workers.

The batch plan (which input indices go together) is fixed in the main process; a worker only turns one
planned batch into tensors. Workers never touch CUDA: pinning and the host-to-device copy happen in the
main process.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import multiprocessing
import multiprocessing.queues
import multiprocessing.util  # its exit hook is registered on import: before ours, so it runs after
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from virnucpro.data.packing import token_length
from virnucpro.errors import EXIT_FAILURE, EXIT_OOM


def _alphabet():
    from esm.data import Alphabet  # fair-esm defines ESM-2's vocabulary: use it, don't copy it

    return Alphabet.from_architecture("ESM-1b")


@dataclass(frozen=True)
class Vocabulary:
    """Byte -> token id lookup built from fair-esm's ESM-2 alphabet."""

    lut: np.ndarray
    cls_idx: int
    eos_idx: int
    padding_idx: int
    mask_idx: int
    size: int

    @classmethod
    def esm2(cls) -> "Vocabulary":
        alphabet = _alphabet()
        lut = np.full(256, alphabet.unk_idx, dtype=np.int64)
        for tok, idx in alphabet.tok_to_idx.items():
            if len(tok) == 1:
                lut[ord(tok)] = idx
        return cls(lut, alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx, alphabet.mask_idx, len(alphabet))


@dataclass
class PackedBatch:
    """One padding-free batch: all tokens concatenated, with sequence boundaries."""

    tokens: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64, restarting at 0 for each sequence
    cu_seqlens: torch.Tensor  # (B+1,) int32
    seq_ids: torch.Tensor  # (T,) int64, which sequence of the batch each token belongs to
    indices: torch.Tensor  # (B,) int64, input order index of each sequence
    max_len: int
    num_tokens: int
    #: (T,) fp32 pooling weight of each token (0 for BOS/EOS/padding), only in batches holding windows of long
    #: sequences (`windows`); None: each segment's plain residue mean.
    weights: torch.Tensor | None = None

    def pin_memory(self) -> "PackedBatch":
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device, non_blocking: bool = True) -> "PackedBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, move) -> "PackedBatch":
        """The same batch with every per-token tensor moved (`indices` stays on the host for the runner)."""
        return PackedBatch(
            move(self.tokens),
            move(self.positions),
            move(self.cu_seqlens),
            move(self.seq_ids),
            self.indices,
            self.max_len,
            self.num_tokens,
            None if self.weights is None else move(self.weights),
        )

    @property
    def num_sequences(self) -> int:
        return int(self.indices.numel())


#: Longest padding segment `collate` makes.
PAD_SEGMENT = 64


def collate(
    seqs: Sequence[bytes],
    indices: Sequence[int],
    vocab: Vocabulary,
    pad_to: int | None = None,
    weights: Sequence[np.ndarray | None] | None = None,
) -> PackedBatch:
    """Tokenize the given sequences as <cls> residues <eos>, concatenated.

    With `pad_to`, trailing padding fills the batch to exactly `pad_to` tokens (one shape for compiled kernels);
    it is cut into segments of at most PAD_SEGMENT tokens after the real ones (attention over a nearly empty
    last batch's padding then costs nothing) and is not counted in `num_tokens`. `weights` (per item: residue
    weights, or None for a plain mean) gives the batch pooling weights when one of its items has some.
    """
    lengths = np.fromiter((token_length(len(seqs[i])) for i in indices), dtype=np.int64, count=len(indices))
    real_tokens = int(lengths.sum())
    if pad_to is not None and pad_to > real_tokens:
        full, rest = divmod(pad_to - real_tokens, PAD_SEGMENT)
        pad = np.full(full + (rest > 0), PAD_SEGMENT, dtype=np.int64)
        if rest:
            pad[-1] = rest
        lengths = np.concatenate([lengths, pad])
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    total = int(cu[-1])
    tokens = np.full(total, vocab.padding_idx, dtype=np.int64)
    for start, i in zip(cu[:-1], indices):
        s = seqs[i]
        tokens[start] = vocab.cls_idx
        tokens[start + 1 : start + 1 + len(s)] = vocab.lut[np.frombuffer(s, dtype=np.uint8)]
        tokens[start + 1 + len(s)] = vocab.eos_idx
    positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1], lengths)
    seq_ids = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return PackedBatch(
        tokens=torch.from_numpy(tokens),
        positions=torch.from_numpy(positions),
        cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
        seq_ids=torch.from_numpy(seq_ids),
        indices=torch.as_tensor(np.asarray(indices, dtype=np.int64)),
        max_len=int(lengths.max()),
        num_tokens=real_tokens,
        weights=_token_weights(seqs, indices, weights, cu, total),
    )


def _token_weights(seqs, indices, weights, cu: np.ndarray, total: int) -> torch.Tensor | None:
    """Per-token pooling weights when a window is in the batch: its residue weights, 1/n for a whole sequence
    of n residues, 0 for BOS/EOS/padding. None otherwise, so plain batches keep the segment mean."""
    if weights is None or all(weights[i] is None for i in indices):
        return None
    out = np.zeros(total, dtype=np.float32)
    for start, i in zip(cu[:-1], indices):
        n = len(seqs[i])
        out[start + 1 : start + 1 + n] = np.float32(1.0 / n) if weights[i] is None else weights[i]
    return torch.from_numpy(out)


class PackedBatchDataset(Dataset):
    """Map-style dataset over a fixed batch plan: item k is planned batch k, so nothing is lost or repeated."""

    def __init__(
        self,
        seqs: Sequence[bytes],
        batches: Sequence[Sequence[int]],
        vocab: Vocabulary | None = None,
        pad_to: int | None = None,
        weights: Sequence[np.ndarray | None] | None = None,
    ):
        self.seqs = seqs
        self.batches = batches
        self.vocab = vocab or Vocabulary.esm2()
        self.pad_to = pad_to
        self.weights = weights

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> PackedBatch:
        return collate(self.seqs, self.batches[k], self.vocab, self.pad_to, self.weights)


def make_loader(dataset: PackedBatchDataset, num_workers: int, prefetch_factor: int, pin_memory: bool) -> DataLoader:
    """A DataLoader yielding PackedBatch objects in plan order (prefetch only applies with workers)."""
    if num_workers < 0:
        raise ValueError("num_workers must be >= 0")
    kwargs = {}
    if num_workers > 0:
        _kill_leftover_workers_at_exit()
        kwargs = {
            "prefetch_factor": max(1, prefetch_factor),
            "persistent_workers": False,
            "worker_init_fn": _init_worker,
        }
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=_identity,
        **kwargs,
    )


def _identity(x):
    return x


def _ignore_sigterm(worker_id: int) -> None:
    """Slurm signals every process of a step. A worker dying of SIGTERM makes torch raise in the main process at
    an arbitrary point; ignoring it lets the main process finish its batch, flush, and shut the workers down.
    The same for SIGHUP and SIGUSR1, which the main process also answers with a flush (see `StopFlag`).
    So SIGTERM cannot end a worker: the main process ends them with SIGKILL (`close_workers`)."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _init_worker(worker_id: int) -> None:
    _ignore_sigterm(worker_id)
    sys.excepthook = _quiet_lost_connection
    multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(_batch_not_sent)  # this process only


def _batch_not_sent(exc: BaseException, obj) -> None:
    """multiprocessing's hook for a message that a queue's feeder thread could not send. In a worker that message
    is a batch, pickled into shared memory; under a memory limit that failed (MemoryError, std::bad_alloc) and
    the batch was dropped with a traceback while the main process waited for it forever (5 of 20 runs under
    ulimit -v 740 MB). The worker exits instead, `EXIT_OOM` when out of memory, else `EXIT_FAILURE` after the
    traceback (a bug): the main process names it (`WorkerDied`)."""
    out_of_memory = isinstance(exc, MemoryError) or "bad_alloc" in str(exc)
    if not (out_of_memory or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)):
        traceback.print_exception(exc)
        os._exit(EXIT_FAILURE)
    os._exit(EXIT_OOM)


def _quiet_lost_connection(exc_type, exc, tb) -> None:
    """A worker's `sys.excepthook`: a connection that the main process dropped is not reported. The main process
    fetches each batch's shared memory from the worker's resource-sharer thread; when a worker's death is raised
    in the middle of a fetch (torch's SIGCHLD handler raises at any point), a surviving worker's thread printed
    the reset connection, 20 lines of traceback around the job's one line (4 in 80 kills), just before it was
    killed itself. A worker's own errors reach the main process through torch, not this hook."""
    if issubclass(exc_type, (ConnectionError, EOFError)):
        return
    sys.__excepthook__(exc_type, exc, tb)


# --- a worker that dies: one clear error, and no worker left behind -------------------------------------------


class WorkerDied(RuntimeError):
    """A DataLoader worker process died (a signal, a native exit such as glibc's 127 when a thread cannot get
    memory, or `EXIT_OOM` from `_batch_not_sent`): one line naming the worker and how it ended; checkpointed rows
    are kept for a rerun."""

    def __init__(self, worker_id: int, pid: int, exitcode: int):
        self.worker_id, self.pid, self.exitcode = worker_id, pid, exitcode
        super().__init__(f"DataLoader worker {worker_id} (pid {pid}) {self.how}{self._hint()}")

    @property
    def signal_name(self) -> str | None:
        if self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return f"signal {-self.exitcode}"

    @property
    def how(self) -> str:
        if self.exitcode == EXIT_OOM:  # `_batch_not_sent`
            return "ran out of memory"
        return f"was killed by {self.signal_name}" if self.exitcode < 0 else f"exited with code {self.exitcode}"

    def _hint(self) -> str:
        resume = "checkpointed rows are kept: rerun the same command to resume"
        if self.exitcode == -signal.SIGKILL:  # nothing else in a job SIGKILLs a worker alone (kill -9 aside)
            return (
                ", most likely by the out-of-memory killer (e.g. Slurm's cgroup memory limit): use fewer "
                f"--num-workers or more memory; {resume}"
            )
        if self.exitcode == EXIT_OOM:
            return f" sending a batch: use fewer --num-workers or more memory; {resume}"
        return f"; {resume}"


#: How long a failure waits for a dying worker to become a zombie: its sockets are reset before it can be
#: reaped, so the main process can fail on a reset connection (fetching a batch's shared memory from it) while
#: the worker still looks alive; torch then raises that error, not the worker's death (3 in 20 kills).
DEATH_WAIT_SECONDS = 1.0
#: How long a SIGKILLed worker gets to be reaped.
KILL_WAIT_SECONDS = 5.0


def dead_worker(workers: Sequence, wait: float = 0.0) -> WorkerDied | None:
    """The first worker process that ended abnormally (a signal or a non-zero exit), waiting up to `wait`
    seconds for one to; None if none has."""
    deadline = time.monotonic() + wait
    while True:
        for worker_id, w in enumerate(workers):
            code = w.exitcode  # polls (and reaps) the process: None while it runs
            if code not in (None, 0):
                return WorkerDied(worker_id, w.pid, code)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


#: How many times to call `close_workers` when torch's SIGCHLD handler interrupts it (at most once per worker).
CLOSE_ATTEMPTS = 4


def torch_worker_death(exc: BaseException) -> bool:
    """Whether `exc` is torch's SIGCHLD handler raising a worker's death."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker (pid")


def close_workers(it, failed: bool, death_wait: float = DEATH_WAIT_SECONDS) -> WorkerDied | None:
    """End the worker processes of DataLoader iterator `it` for sure; the worker that had died, if one had.

    Workers ignore SIGTERM (`_ignore_sigterm`), and SIGTERM is all that torch's shutdown and multiprocessing's
    exit hook send before joining a worker: after a worker's death the exception's traceback kept the iterator,
    so torch's shutdown never ran, and the process hung at exit joining the idle survivor. So torch's shutdown
    is called here and any worker still alive after it is SIGKILLed. After a failure (`failed`: the loop
    raised) the dead worker is looked for (for up to `death_wait` seconds) and then every worker is SIGKILLed
    first: torch's shutdown joins a worker for 5 s, SIGTERMs it and joins it 5 s more, 10 s for each stuck one
    (a batch's message to the main process is one small, atomic pipe write, so a kill leaves no half message
    for a CUDA pin-memory thread).
    SIGCHLD is ignored meanwhile: torch's handler would raise the first death again at each worker that ends.
    Until it is set aside that handler can still raise a death here, even at this function's first line (2 in
    80 kills): the caller calls it again, from a `try` (`torch_worker_death`, `CLOSE_ATTEMPTS`)."""
    workers = list(getattr(it, "_workers", ()))  # [] without workers (num_workers=0) or before they started
    if not workers:
        return None
    with _sigchld_ignored():
        died = dead_worker(workers, death_wait) if failed else None
        if failed:
            _kill(workers)
        try:  # under a memory limit its put(None) to a worker can fail to start the queue's thread
            it._shutdown_workers()  # torch's own: the worker pids leave its SIGCHLD watch, the queues close
        finally:
            _kill(workers)
    return died


@contextlib.contextmanager
def _sigchld_ignored():
    """No Python SIGCHLD handler meanwhile (main thread only: elsewhere none runs anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def _kill(workers: Sequence) -> None:
    for w in workers:
        if w.is_alive():
            w.kill()
    for w in workers:
        w.join(KILL_WAIT_SECONDS)


_exit_hook_registered = False


def _kill_leftover_workers_at_exit() -> None:
    """At exit, SIGKILL the daemonic children still alive (DataLoader workers: they ignore SIGTERM), before
    multiprocessing's exit hook SIGTERMs and then joins them forever. Registered after that hook, so it runs
    first (atexit is last in, first out). A safety net: `close_workers` normally leaves none."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_daemonic_children)
        _exit_hook_registered = True


def _kill_daemonic_children() -> None:
    with _sigchld_ignored():  # torch's handler would raise at the first one killed, leaving the others
        _kill([p for p in multiprocessing.active_children() if p.daemon])
