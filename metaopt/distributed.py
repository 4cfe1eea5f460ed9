"""Distributed meta-training of ``metaopt maml-rl`` on ``torch.distributed``.

Data parallelism over *tasks*: every rank draws the same full iteration (tasks and common random
numbers) from the same seeded generator, runs the inner loops and outer losses of its contiguous shard
of the tasks (:func:`shard_slice`; uneven shards are fine), and the meta-gradients are summed over ranks
with one all-reduce per iteration (the meta-loss is a sum over tasks). The model ``theta_0``, the
meta-parameters, the outer Adam state and the generator are replicated and stay bit-identical on every
rank (checked at start-up and at every checkpoint). Per-task losses and returns are all-gathered, so
rank 0's metrics are all-task averages equal to a one-process run's, and every rank detects a non-finite
loss or gradient at the same point (no rank is left waiting in a collective). Rank 0 alone evaluates,
logs and writes the artifacts and checkpoints; ``--resume`` reads the checkpoint on rank 0 and
broadcasts it.

This module is infrastructure: it knows nothing of the job (it imports nothing from :mod:`metaopt.maml` or
:mod:`metaopt.experiments`). The job's launchers::

    metaopt maml-rl --nproc 4 ...                                     # one machine: 4 local workers (spawn)
    torchrun --nproc_per_node=4 -m metaopt.experiments.maml_rl ...    # any torchrun setup, several machines

The backend is ``gloo`` for CPU tensors and ``nccl`` for CUDA tensors.

Faults: every collective waits at most ``timeout`` seconds (``init_process_group(timeout=...)``; default
:data:`DEFAULT_TIMEOUT`) for the other ranks, so a frozen or dead rank ends the job instead of hanging it. A
failed collective raises :class:`CollectiveError` with one line naming the rank and the operation; the local
launcher (:func:`launch`) stops the other workers and prints that one line.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import pickle
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from metaopt._validation import check_int

__all__ = ["Communicator", "CollectiveError", "ReportedError", "WorkerError", "shard_slice", "select_backend",
           "init_from_env", "started_by_torchrun",
           "shutdown", "spawn", "launch", "DEFAULT_TIMEOUT", "check_timeout"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: Seconds a collective waits for the other ranks before failing (torch's own default is 30 minutes).
DEFAULT_TIMEOUT = 600.0


class ReportedError(RuntimeError):
    """An error whose message is the whole report: the launcher prints it as one line (no traceback)."""


class CollectiveError(ReportedError):
    """A collective operation failed: another rank died, or did not answer within the timeout."""


def check_timeout(name: str, timeout: float) -> float:
    """Check a collective timeout in seconds (a finite number > 0); return it as a float."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 1e9:
        raise ValueError(f"{name} must be a number of seconds in (0, 1e9), got {timeout!r}")
    return float(timeout)


@contextmanager
def _collective(rank: int, op: str) -> Iterator[None]:
    """Turn a backend failure of collective ``op`` into one :class:`CollectiveError` line."""
    try:
        yield
    except CollectiveError:
        raise
    except (RuntimeError, ValueError, ConnectionError) as err:  # DistBackendError, gloo's timeout, reset peers
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise CollectiveError(f"rank {rank}: {op} failed: another process died or did not answer in time "
                              f"({type(err).__name__}: {first[:300]})") from err


def shard_slice(num_tasks: int, world_size: int, rank: int) -> slice:
    """The contiguous shard ``start:stop`` of ``num_tasks`` tasks for ``rank`` of ``world_size``.

    The first ``num_tasks % world_size`` ranks get one task more (5 tasks on 2 ranks: ``0:3``, ``3:5``).
    """
    check_int("num_tasks", num_tasks, low=1)
    check_int("world_size", world_size, low=1)
    check_int(f"rank (world_size={world_size})", rank, low=0, high=world_size - 1)
    if world_size > num_tasks:
        raise ValueError(f"world_size must be <= num_tasks={num_tasks} so that every rank has a task, "
                         f"got {world_size}")
    base, extra = divmod(num_tasks, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def select_backend(device: torch.device | str | None = None) -> str:
    """``nccl`` for CUDA tensors when CUDA (and NCCL) is available, else ``gloo``."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


@dataclass
class Communicator:
    """This process's view of an initialized process group (see :func:`init_from_env`, :func:`spawn`).

    Attributes:
        rank: This process's rank.
        world_size: Number of processes.
        device: Where collective buffers live (CPU for gloo).
        group: The process group (``None``: the default group).
    """

    rank: int
    world_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: Any = None

    @classmethod
    def current(cls, device: torch.device | str | None = None) -> Communicator:
        """The communicator of the already initialized default process group."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized; call init_from_env() or use spawn()")
        return cls(dist.get_rank(), dist.get_world_size(), torch.device(device or "cpu"))

    # -------------------------------------------------------------------------------------- sharding
    def task_slice(self, num_tasks: int) -> slice:
        """This rank's contiguous shard of ``num_tasks`` tasks."""
        return shard_slice(num_tasks, self.world_size, self.rank)

    # ----------------------------------------------------------------------------------- collectives
    def all_reduce_sum(self, tensors: Sequence[Tensor]) -> None:
        """Sum ``tensors`` over ranks, in place (one flat all-reduce per dtype)."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.device)
            with _collective(self.rank, "all_reduce"):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            offset = 0
            for t in group:
                with torch.no_grad():
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def gather_tasks(self, local: Tensor, num_tasks: int) -> Tensor:
        """All-gather a per-task tensor ``[..., n_local]`` of this rank's shard into ``[..., num_tasks]``.

        Exact (a concatenation, no arithmetic), so rank 0 sees the same per-task values as every rank.
        """
        shards = [shard_slice(num_tasks, self.world_size, r) for r in range(self.world_size)]
        mine = shards[self.rank]
        if local.shape[-1] != mine.stop - mine.start:
            raise ValueError(f"local must have {mine.stop - mine.start} entries in its last dimension (this "
                             f"rank's tasks {mine.start}:{mine.stop}), got shape {tuple(local.shape)}")
        width = max(s.stop - s.start for s in shards)
        pad = torch.zeros((*local.shape[:-1], width), dtype=local.dtype, device=self.device)
        pad[..., : local.shape[-1]] = local.detach().to(self.device)
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        with _collective(self.rank, "all_gather"):
            dist.all_gather(parts, pad, group=self.group)
        out = torch.cat([p[..., : s.stop - s.start] for p, s in zip(parts, shards, strict=True)], dim=-1)
        return out.to(local.device)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled)."""
        box = [obj if self.rank == src else None]
        with _collective(self.rank, "broadcast"):
            dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        with _collective(self.rank, "barrier"):
            dist.barrier(group=self.group)

    def check_replicated(self, tensors: Sequence[Tensor], iteration: int) -> None:
        """Raise the same ``RuntimeError`` on every rank if ``tensors`` (the replicated state) differ between ranks."""
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        h.update(str(iteration).encode())
        digests: list[Any] = [None] * self.world_size
        with _collective(self.rank, "all_gather_object"):
            dist.all_gather_object(digests, h.hexdigest(), group=self.group)
        if len(set(digests)) != 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise RuntimeError(
                f"the replicated training state (model, meta-parameters, optimizer, generator) differs between "
                f"ranks at iteration {iteration}: ranks {differ} differ from rank 0; expected identical "
                "replicas (same metaopt/torch versions and seed on every machine)"
            )


# -------------------------------------------------------------------------------------- set-up
def started_by_torchrun() -> bool:
    """Whether torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) is set."""
    return all(k in os.environ for k in _ENV)


def shutdown() -> None:
    """Destroy the default process group if one is initialized."""
    if dist.is_initialized():
        dist.destroy_process_group()


def init_from_env(device: torch.device | str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> Communicator:
    """Initialize the default process group from torchrun's environment (``env://``).

    Every collective then waits at most ``timeout`` seconds for the other ranks.
    """
    check_timeout("timeout", timeout)
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"a distributed run must be started by torchrun (environment variables {missing} are not set); "
            "on one machine use `metaopt maml-rl --nproc N` instead"
        )
    if not dist.is_initialized():
        dist.init_process_group(select_backend(device), init_method="env://",
                                timeout=datetime.timedelta(seconds=timeout))
    return Communicator.current(device)


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):  # pragma: no cover
        return None
    return next((n for n in names if n == "lo" or n.startswith("lo")), None)


def _spawned(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...],
             result_path: str, threads: int, timeout: float) -> None:
    """Body of one spawned worker: join the group through the parent's store, run ``fn``, save rank 0's result.

    A failure is written to ``result_path.error<rank>`` (one line for a :class:`CollectiveError`, else the
    traceback) and the process exits at once with status 1: no barrier or teardown that could wait on a dead or
    frozen peer.
    """
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    lo = _loopback_interface()
    if lo is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)  # all workers are local: talk over loopback
    try:
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout))
        with _collective(rank, "joining the process group"):
            dist.init_process_group(select_backend(), store=store, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout))
        result = fn(Communicator.current(), *args)
        if rank == 0:
            with open(result_path, "wb") as f:
                pickle.dump(result, f)
        with _collective(rank, "barrier"):
            dist.barrier()  # leave together: no rank tears down while another still talks to it
        dist.destroy_process_group()
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which prints it
        import traceback

        text = str(err).replace("\n", " ") if isinstance(err, ReportedError) else traceback.format_exc()
        with open(f"{result_path}.error{rank}", "w") as f:
            f.write(text)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    # Success: skip the interpreter's teardown, where the destruction order of gloo's and the store's C++
    # threads can abort the process ("terminate called without an active exception", seen under load).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class WorkerError(RuntimeError):
    """A worker of :func:`spawn` failed or died.

    The message is one line, unless a worker raised an unexpected error (then it carries that worker's traceback).
    """


def spawn(fn: Callable[..., Any], nproc: int, *args: Any, threads: int | None = None,
          timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Run ``fn(comm, *args)`` in ``nproc`` local worker processes joined in a gloo process group.

    Rendezvous goes through a store that this process serves on 127.0.0.1 on a free port chosen by the
    OS (no port race). ``fn`` and ``args`` must be picklable (``fn`` a module-level function). When one worker
    fails or dies, the others get a short grace period, then SIGTERM, then SIGKILL (a frozen, ``SIGSTOP``-ed
    worker is killed too).

    Args:
        fn: The worker body; gets a :class:`Communicator` first.
        nproc: Number of processes (>= 1).
        args: Further arguments of ``fn``.
        threads: Torch threads per worker (default: ``OMP_NUM_THREADS`` if set, else 1).
        timeout: Seconds a collective waits for the other workers before it fails.

    Returns:
        Rank 0's return value.

    Raises:
        WorkerError: a worker raised or died (the others are stopped).
    """
    check_int("nproc", nproc, low=1)
    check_timeout("timeout", timeout)
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    import torch.multiprocessing as mp

    store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    with tempfile.TemporaryDirectory(prefix="metaopt-dist-") as tmp:
        result_path = str(Path(tmp) / "result.pkl")
        ctx = mp.spawn(_spawned, args=(nproc, store.port, fn, tuple(args), result_path, threads, timeout),
                       nprocs=nproc, join=False)
        failure = _wait(ctx.processes)
        if failure is not None:
            raise WorkerError(_failure_line(failure, result_path, nproc))
        with open(result_path, "rb") as f:
            return pickle.load(f)


def _wait(procs: Sequence[Any], grace: float = 2.0) -> str | None:
    """Wait for every worker; at the first failure give the others ``grace`` seconds, then SIGKILL them.

    Returns:
        ``None`` when all exited with 0, else how the first failed one ended (``process 1 was killed by
        SIGKILL``).
    """
    import multiprocessing.connection
    import time

    pending = {p.sentinel: (r, p) for r, p in enumerate(procs)}
    failure = None
    while pending and failure is None:
        for sentinel in multiprocessing.connection.wait(list(pending)):
            rank, proc = pending.pop(sentinel)
            proc.join()
            if proc.exitcode != 0 and failure is None:
                code = proc.exitcode
                failure = (f"process {rank} was killed by {signal.Signals(-code).name}" if code < 0
                           else f"process {rank} exited with status {code}")
    if failure is not None:
        deadline = time.monotonic() + grace
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:  # SIGKILL: a frozen (SIGSTOP-ed) worker would not act on SIGTERM
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
    return failure


def _failure_line(failure: str, result_path: str, nproc: int) -> str:
    """One line for a failed :func:`spawn`: what the workers reported, else how the first one ended."""
    reports = []
    for r in range(nproc):
        try:
            reports.append(Path(f"{result_path}.error{r}").read_text().strip())
        except OSError:
            pass
    collective = [t for t in reports if "\n" not in t]
    if collective:
        return f"{failure}; {collective[0]}" if "killed" in failure else collective[0]
    if reports:
        return f"a worker process failed:\n{reports[0]}"
    return f"a worker process died: {failure}"


def launch(fn: Callable[..., int], nproc: int, *args: Any, prog: str = "metaopt",
           timeout: float = DEFAULT_TIMEOUT) -> int:
    """Run ``fn(comm, *args) -> exit code`` on ``nproc`` local processes; return rank 0's code.

    When a worker fails or dies, the others are stopped, ``prog: error: ...`` is printed (one line for a dead or
    unresponsive worker) and the exit code is 4.
    """
    try:
        return int(spawn(fn, nproc, *args, timeout=timeout))
    except WorkerError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
    return 4


if __name__ == "__main__":  # pragma: no cover
    print("metaopt.distributed is a library module; run the job with torchrun -m metaopt.experiments.maml_rl "
          "(or metaopt maml-rl --nproc N on one machine)", file=sys.stderr)
    sys.exit(2)
