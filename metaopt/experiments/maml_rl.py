"""``metaopt maml-rl``: MAML-A2C on TabularMDP or 2D navigation (``--env``) with PopArt, learning beta and the inner lr.

Writes into ``--out``: ``config.json`` (the resolved configuration), ``metrics.csv`` (one row per
iteration), ``eval.csv`` (test-task evaluations), ``metrics.json`` (both plus the summary), ``returns.png``
and ``meta_params.png``, and ``checkpoint.pt`` every ``--checkpoint-every`` iterations (every file written
atomically, see :mod:`metaopt.artifacts`). ``--resume`` continues from ``checkpoint.pt`` bit-identically. An
``--out`` that already holds files is refused unless ``--resume`` or ``--overwrite`` is given.

``--nproc N`` shards each iteration's tasks over ``N`` local processes (:mod:`metaopt.distributed`); on several
machines run ``torchrun [torchrun flags] -m metaopt.experiments.maml_rl [flags]``. The results match a
one-process run.

One run at a time owns ``--out``: it holds an exclusive lock on ``OUT/.lock`` (:class:`metaopt.artifacts.OutDirLock`)
from its first write to its end, and a second run into the same directory is refused. ``checkpoint.pt`` carries
a SHA-256 digest of its contents and every field is checked against the configuration on ``--resume``.

Exit codes: 0 done, 2 bad input (one ``error:`` line naming the flag, its value and what was expected;
nothing written), 3 a non-finite loss, meta-gradient or meta-parameter stopped the run (the message names the
iteration and the tasks; ``checkpoint.pt`` stays the last good one), 4 a runtime fault stopped the run (a write
failed, memory ran out, another process died or stopped answering; one line with the last good checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metaopt import distributed as dist_lib
from metaopt import loggers
from metaopt._validation import check_int
from metaopt.artifacts import (
    LOCK_NAME,
    OutDirLock,
    atomic_write,
    check_out_dir,
    check_plotting,
    remove_stale_temporaries,
    tree_digest,
    write_csv,
    write_json,
)
from metaopt.dataclass_args import ArgumentParser, add_dataclass_arguments, dataclass_flags, dataclass_overrides
from metaopt.maml import (
    MAMLConfig,
    MetaLearner,
    NonFiniteError,
    check_finite,
    gradient_signal,
    nonfinite_gradient_tasks,
)

__all__ = ["PRESETS", "CHECKPOINT", "ARTIFACTS", "add_arguments", "run", "train", "config_from_args",
           "TrainResult", "RunFault", "atomic_write", "save_checkpoint", "load_checkpoint", "format_summary",
           "check_memory", "main"]

#: Named configurations; explicit command-line values override them.
PRESETS: dict[str, dict[str, Any]] = {
    # TorchOpt's MAML-RL example: 40 tasks x 20 trajectories, 500 iterations, inner lr 0.1, no PopArt.
    "reference": {},
    # The project's job in the setting PopArt exists for: scaled TabularMDP (rewards x 10^U(-2, 3)), PopArt learning
    # beta and one inner lr per parameter tensor from the policy objective (one shared lr kills the body once it
    # grows past ~10), K = 2. The statistics are Algorithm 1's constant beta from mu = 0, nu = 1 (not debiased), the
    # schedule in which beta is a lever, started at 0.9: from the paper's 0.1 the meta-gradient lowers beta into the
    # worse of two basins (see the README's results: "What beta does in MAML").
    "demo": {"popart": True, "learn": ("beta", "lr"), "lr_per_parameter": True, "scaled": True, "iterations": 500,
             "eval_every": 50, "debias": False, "beta": 0.9, "inner_steps": 2},
    # CI smoke run.
    "smoke": {"popart": True, "learn": ("beta", "lr"), "lr_per_parameter": True, "iterations": 3, "tasks": 4,
              "trajectories": 4, "eval_every": 2, "eval_tasks": 4},
}
#: File name of the checkpoint in ``--out`` (``--resume`` reads it).
CHECKPOINT = "checkpoint.pt"
#: The task family's name in run names (``--wandb``), by ``MAMLConfig.env``.
_ENV_NAMES = {"tabular": "TabularMDP", "pointnav2d": "PointNav2D"}
FORMAT = "metaopt.maml_rl/3"
#: Every file a run may write into ``--out`` (an ``--out`` holding any of them needs ``--resume`` or ``--overwrite``).
ARTIFACTS = (CHECKPOINT, "config.json", "metrics.csv", "eval.csv", "metrics.json", "returns.png", "meta_params.png")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``maml-rl`` arguments: the :class:`MAMLConfig` fields (over a preset) and the run options."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference",
                   help="named configuration; explicit flags override it: " + "; ".join(
                       f"{k}: {', '.join(f'{f}={v}' for f, v in d.items()) or 'the defaults'}"
                       for k, d in PRESETS.items()) + " (default: reference)")
    add_dataclass_arguments(p.add_argument_group("configuration"), MAMLConfig, overridable=True)
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("runs/maml_rl"), help="output directory (default: runs/maml_rl)")
    g.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
    g.add_argument("--overwrite", action="store_true", help="replace the artifacts of a previous run in OUT")
    g.add_argument("--checkpoint-every", type=int, default=25, help="checkpoint period in iterations (default: 25)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log scalars to OUT/tb (needs pip install 'metaopt-torch[tensorboard]')")
    g.add_argument("--wandb", metavar="PROJECT", default=None,
                   help="also log scalars to a Weights & Biases run in PROJECT "
                        "(needs pip install 'metaopt-torch[wandb]')")
    g.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default=None,
                   help="W&B mode (default: W&B's own, i.e. the WANDB_MODE environment variable)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    g.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    g.add_argument("--nproc", type=int, default=1,
                   help="local processes: the tasks are sharded over them and the meta-gradients all-reduced (gloo "
                        "on CPU); for several machines use torchrun -m metaopt.experiments.maml_rl (default: 1)")
    g.add_argument("--dist-timeout", type=float, default=dist_lib.DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="distributed runs: how long a collective waits for the other processes before the run stops "
                        f"with an error (a dead or frozen process) (default: {dist_lib.DEFAULT_TIMEOUT:g})")


#: Configuration field -> command-line flag, for error messages.
FLAGS = dataclass_flags(MAMLConfig)


def config_from_args(args: argparse.Namespace) -> MAMLConfig:
    """Resolve preset + explicit flags into a validated :class:`MAMLConfig` (errors name the flags).

    Also refuses a configuration whose tensors cannot fit in this machine's memory (:func:`check_memory`).
    """
    cfg = MAMLConfig(**(PRESETS[args.preset] | dataclass_overrides(MAMLConfig, args))).validate(names=FLAGS)
    check_memory(cfg, names=FLAGS)
    return cfg


class RunFault(dist_lib.ReportedError):
    """A runtime fault stopped a run (a write failed, memory ran out, a process died or stopped answering).

    The message is one line and ends with the last good checkpoint (``exit code 4`` on the command line).
    """


class _WriteFault(RunFault, OSError):
    """A write into ``--out`` failed (also an ``OSError``, as the failure it reports)."""


def _memory_total(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return 2**63


def memory_lower_bound(cfg: MAMLConfig) -> int:
    """Bytes a run needs at least: tensors it must allocate whatever the engine (a lower bound, not an estimate).

    ``P`` model parameters (theta_0, its gradient and two Adam moments: ``4 P``), and per task of an iteration
    ``K P`` fast weights, the task's transition table ``S A S`` and reward means ``S A``, and ``3 (K + 1) B T``
    common random numbers; the test tasks' table and noise likewise.
    """
    s, a, h, k = cfg.num_states, cfg.num_actions, cfg.hidden, cfg.num_inner_steps
    params = s * h + h + h * h + h + h * a + a + h + 1
    per_task = k * params + s * a * s + s * a + 3 * (k + 1) * cfg.trajectories * cfg.episode_length
    item = 8 if cfg.dtype == "float64" else 4
    return item * (4 * params + cfg.tasks * per_task + cfg.eval_tasks * (s * a * s + s * a
                                                                          + 3 * (k + 1) * cfg.trajectories
                                                                          * cfg.episode_length))


def check_memory(cfg: MAMLConfig, *, names: dict[str, str] | None = None) -> None:
    """Refuse a configuration whose :func:`memory_lower_bound` exceeds the device's memory (before any write)."""
    need, have = memory_lower_bound(cfg), _memory_total(cfg.torch_device)
    if need > have:
        n = names or {}
        sizes = ", ".join(f"{n.get(f, f)}={getattr(cfg, f)}" for f in (
            "tasks", "trajectories", "horizon", "hidden", "num_states", "num_actions", "eval_tasks"))
        raise ValueError(f"the configuration ({sizes}) needs at least {need / 2**30:.3g} GiB of memory on "
                         f"{cfg.device}, which has {have / 2**30:.3g} GiB; expected smaller values (the largest "
                         "products of these sizes dominate)")


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, learner: MetaLearner, history: dict[str, list[dict[str, Any]]]) -> None:
    """Atomically save everything needed for an exact resume, with a SHA-256 digest of its contents.

    Serialized in memory first: a failing write (a full disk) then raises the file system's ``OSError``, which
    torch's zip writer would turn into an opaque ``RuntimeError``.
    """
    state = learner.state_dict() | {"history": history, "format": FORMAT}
    state["sha256"] = tree_digest(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


_CHECKPOINT_KEYS = ("config", "iteration", "model", "meta", "optimizer", "generator", "history", "sha256")


def load_checkpoint(path: Path, cfg: MAMLConfig, learner: MetaLearner | None = None) -> dict[str, Any]:
    """Load and check a checkpoint against ``cfg`` (every field but ``iterations`` and ``device`` must match).

    Loads with ``weights_only=True`` (tensors and plain containers only) onto ``cfg``'s device, so a checkpoint
    written on a GPU resumes on a CPU and the other way round. The contents must match the stored SHA-256 digest
    (a flipped byte is refused) and every field must be what ``cfg``'s learner holds: an iteration in
    ``[0, cfg.iterations]``, tensors of the model's names, shapes and dtypes, finite values, an Adam state for
    the same parameters, a generator state that the generator accepts, and a history of the iterations done.

    Args:
        path: The checkpoint file.
        cfg: The configuration of the run that resumes.
        learner: A learner of ``cfg`` to compare shapes with (default: a fresh one, built without touching the
            global RNG).

    Raises:
        ValueError: one line naming the file and the first problem.
    """
    if not path.is_file():
        raise ValueError(f"--resume needs a checkpoint at {str(path)!r}, but there is none")
    try:
        state = torch.load(path, weights_only=True, map_location=cfg.torch_device)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"checkpoint {str(path)!r} is unreadable, expected a file written by metaopt maml-rl "
                         f"({type(err).__name__}: {first})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a metaopt maml-rl checkpoint of this version (expected "
                         f"format {FORMAT!r}, got {state.get('format') if isinstance(state, dict) else None!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is incomplete: missing {missing}")
    stored = state.pop("sha256")
    try:
        digest = tree_digest(state)
    except TypeError as err:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt ({err})") from err
    if digest != stored:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: its contents do not match its SHA-256 digest "
                         "(changed after it was written); expected an intact file (resume from a copy or start anew)")
    saved, now = state["config"], cfg.validate().to_dict()
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: config is a {type(saved).__name__}, expected a dict")
    diff = {k: (saved.get(k), now[k]) for k in now if k not in ("iterations", "device") and saved.get(k) != now[k]}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {str(path)!r} was made with a different configuration ({detail})")
    if learner is None:
        with torch.random.fork_rng(devices=[]):
            learner = MetaLearner(cfg)
    _check_fields(path, state, cfg, learner)
    return state


def _check_fields(path: Path, state: dict[str, Any], cfg: MAMLConfig, learner: MetaLearner) -> None:
    """Every field of a (digest-checked) checkpoint against the learner of ``cfg``; one ``ValueError`` line."""
    where = f"checkpoint {str(path)!r}"
    it = state["iteration"]
    if isinstance(it, bool) or not isinstance(it, int) or it < 0:
        raise ValueError(f"{where} is corrupt: iteration must be an int >= 0, got {it!r}")
    if it > cfg.iterations:
        raise ValueError(f"--iterations must be >= the {it} iterations {where} has done (to continue it), got "
                         f"{cfg.iterations}; expected --iterations {it} or more, or a new --out")

    def same_tensors(name: str, got: Any, ref: dict[str, torch.Tensor]) -> None:
        if not isinstance(got, dict) or sorted(got) != sorted(ref):
            raise ValueError(f"{where} is corrupt: {name} must hold {sorted(ref)}, got "
                             f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
        for k, r in ref.items():
            t = got[k]
            if not isinstance(t, torch.Tensor) or t.shape != r.shape or t.dtype != r.dtype:
                desc = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{where} is corrupt: {name}[{k!r}] must be a {tuple(r.shape)} {r.dtype} tensor "
                                 f"(the model's), got {desc}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{where} is corrupt: {name}[{k!r}] holds non-finite values")

    same_tensors("model", state["model"], learner.model.state_dict())
    same_tensors("meta", state["meta"], learner.meta.state_dict())
    _check_optimizer(where, state["optimizer"], learner)
    gen, ref_gen = state["generator"], learner.generator.get_state()
    if not isinstance(gen, torch.Tensor) or gen.dtype != ref_gen.dtype or gen.shape != ref_gen.shape:
        raise ValueError(f"{where} is corrupt: generator must be a {tuple(ref_gen.shape)} {ref_gen.dtype} tensor "
                         f"(a generator state), got {getattr(gen, 'shape', type(gen).__name__)}")
    try:
        torch.Generator(device=learner.generator.device).set_state(gen.cpu())
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{where} is corrupt: generator is not a valid generator state ({err})") from err
    _check_history(where, state["history"], it)


def _check_optimizer(where: str, opt: Any, learner: MetaLearner) -> None:
    ref = learner.optimizer.state_dict()
    params = learner.parameters()
    if (not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list)
            or not isinstance(opt.get("state"), dict)
            or [g.get("params") if isinstance(g, dict) else None for g in opt["param_groups"]]
            != [g["params"] for g in ref["param_groups"]]):
        raise ValueError(f"{where} is corrupt: optimizer must be the outer Adam state of the model's "
                         f"{len(params)} parameters")
    for i, moments in opt["state"].items():
        if not isinstance(i, int) or not 0 <= i < len(params) or not isinstance(moments, dict):
            raise ValueError(f"{where} is corrupt: optimizer state has an entry {i!r} for no parameter")
        for k in ("exp_avg", "exp_avg_sq", "step"):
            t = moments.get(k)
            shape = params[i].shape if k != "step" else torch.Size([])
            if not isinstance(t, torch.Tensor) or t.shape != shape or not bool(torch.isfinite(t).all()):
                raise ValueError(f"{where} is corrupt: optimizer state {k} of parameter {i} must be a finite "
                                 f"{tuple(shape)} tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if bool((moments["exp_avg_sq"] < 0).any()) or float(moments["step"]) < 0:
            raise ValueError(f"{where} is corrupt: optimizer state of parameter {i} has a negative second moment "
                             "or step")


def _check_history(where: str, history: Any, it: int) -> None:
    if not isinstance(history, dict) or not all(isinstance(history.get(k), list) for k in ("train", "eval")):
        raise ValueError(f"{where} is corrupt: history must hold the train and eval rows")
    for part in ("train", "eval"):
        rows = history[part]
        raw = [r.get("iteration") if isinstance(r, dict) else None for r in rows]
        its = [i for i in raw if isinstance(i, int) and not isinstance(i, bool)]
        if len(its) != len(raw) or its != sorted(set(its)) or (its and not 1 <= its[0]) \
                or (its and its[-1] > it) or (part == "train" and its and its[-1] != it):
            raise ValueError(f"{where} is corrupt: its {part} rows must be increasing iterations up to the "
                             f"checkpoint's {it}, got {its[:3]}...{its[-3:]}")


def check_fresh_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that holds files unless resuming or overwriting (nothing is touched here)."""
    check_out_dir(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: resume continues the run in --out, "
                         "overwrite starts a new one there")
    if out.is_dir() and not resume and not overwrite and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise ValueError(f"--out {str(out)!r} already holds files (a previous run?); expected an empty or new "
                         "directory, or --resume to continue that run, or --overwrite to replace it")


def _clear_previous_run(out: Path) -> None:
    for name in ARTIFACTS:
        (out / name).unlink(missing_ok=True)
    if (out / "tb").is_dir():
        shutil.rmtree(out / "tb")


# ---------------------------------------------------------------------------------------------- train
@dataclasses.dataclass
class TrainResult:
    """What a run produced (``written``: the artifact files that exist in ``out``)."""

    config: MAMLConfig
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path
    learner: MetaLearner
    status: str = "completed"
    error: str | None = None
    written: list[str] = dataclasses.field(default_factory=list)


def _summary(cfg: MAMLConfig, learner: MetaLearner, eval_rows: list[dict[str, Any]], wall: float,
             train_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"iterations": learner.iteration, "wall_time_s": round(wall, 2)} | learner.meta.summary() \
        | learner.health()
    rows = [r for r in train_rows or [] if "grad_logit_beta" in r and "grad_log_lr" in r]
    if rows:  # a learned beta's meta-gradient signal (maml.gradient_signal): first 10, first 50 and last 50 rows
        def signal(part: list[dict[str, Any]]) -> dict[str, float]:
            return gradient_signal([r["grad_logit_beta"] for r in part], [r["grad_log_lr"] for r in part])

        s |= {"beta_grad_ratio_first10": signal(rows[:10])["ratio"], "beta_grad_t_first50": signal(rows[:50])["t"],
              "beta_grad_t_last50": signal(rows[-50:])["t"], "beta_grad_zeros": int(signal(rows)["zeros"])}
    if eval_rows:
        last = eval_rows[-1]
        s |= {k: v for k, v in last.items() if k.startswith("test_")}
        s["adaptation_gain"] = last["test_post_return"] - last["test_pre_return"]
        if cfg.scaled:
            s["adaptation_gain_norm"] = last["test_post_return_norm"] - last["test_pre_return_norm"]
    return s


def _distributed_step(learner: MetaLearner, comm: dist_lib.Communicator) -> dict[str, float]:
    """One iteration on this rank's tasks: meta-gradient, all-reduce, the same checks on every rank, apply."""
    t0, n = time.perf_counter(), learner.cfg.tasks
    data, sl = learner.sample_iteration(), comm.task_slice(n)
    mg = learner.meta_gradient(data, task_slice=sl)
    per_task = comm.gather_tasks(mg.per_task, n)
    local_bad = not all(bool(torch.isfinite(g).all()) for g in mg.grads)
    comm.all_reduce_sum(mg.grads)

    def gradient_tasks() -> list[int]:  # every rank calls this (the reduced gradient is the same everywhere)
        mask = torch.zeros(sl.stop - sl.start, dtype=per_task.dtype, device=per_task.device)
        for t in nonfinite_gradient_tasks(learner, data, sl) if local_bad else []:
            mask[t - sl.start] = 1.0
        return comm.gather_tasks(mask, n).nonzero().flatten().tolist()

    check_finite(learner, per_task, mg.grads, gradient_tasks)
    learner.apply(mg.grads)
    return learner.metrics(per_task, time.perf_counter() - t0, mg.grads)


def train(
    cfg: MAMLConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 25,
    progress: bool = True,
    plot: bool = True,
    tensorboard: bool = False,
    wandb: str | None = None,
    wandb_mode: str | None = None,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    comm: dist_lib.Communicator | None = None,
) -> TrainResult:
    """Run (or resume) MAML-A2C training and write the artifacts into ``out``.

    Every input is checked before anything is written: a bad configuration, output directory or checkpoint
    raises ``ValueError`` (a missing optional package ``ImportError``) and leaves no files. A non-finite loss or
    meta-gradient stops the run cleanly (``status="non-finite"``, the message in ``error``): the checkpoint on
    disk stays the last good one.

    Args:
        cfg: The configuration.
        out: Output directory (new or empty, unless ``resume`` or ``overwrite``).
        resume: Continue from ``out/checkpoint.pt`` (bit-identical to an uninterrupted run).
        overwrite: Replace a previous run's artifacts in ``out``.
        checkpoint_every: Checkpoint period (iterations); a checkpoint is also written at the end.
        progress: Show a progress bar.
        plot: Write PNG plots (needs matplotlib: checked first, before any work).
        tensorboard: Log scalars to ``out/tb`` (:class:`metaopt.loggers.TensorBoardLogger`).
        wandb: Log scalars to a Weights & Biases run in this project (:class:`metaopt.loggers.WandbLogger`).
        wandb_mode: W&B's mode (``online``, ``offline``, ``disabled``; ``None``: W&B's default).
        log: Where text goes.
        stop_after: Stop (as if interrupted, after checkpointing) once this iteration is done (for tests).
        comm: Distributed meta-training (:class:`metaopt.distributed.Communicator`): this rank's share of the
            tasks; rank 0 alone evaluates, logs and writes.

    Returns:
        A :class:`TrainResult` (on ranks other than 0 without rows).
    """
    cfg.validate()
    check_plotting(plot)
    check_int("checkpoint_every", checkpoint_every, low=1)
    check_int("stop_after", stop_after, low=1, allow_none=True)
    check_memory(cfg)
    if comm is not None and comm.world_size > cfg.tasks:
        raise ValueError(f"tasks must be >= the number of processes ({comm.world_size}) so that every process "
                         f"has a task, got {cfg.tasks}")
    main = comm is None or comm.rank == 0
    learner = MetaLearner(cfg)
    ckpt = out / CHECKPOINT

    # Checks of what lives on rank 0's machine; all ranks share the outcome (fail together or resume together).
    # Rank 0 takes --out's lock before it reads the checkpoint, and holds it until the run ends.
    error: BaseException | None = None
    state: dict[str, Any] | None = None
    lock = OutDirLock(out) if main else None
    if lock is not None:
        try:
            check_fresh_out_dir(out, resume=resume, overwrite=overwrite)
            if tensorboard:
                try:
                    loggers.require("tensorboard")
                except ImportError as err:
                    raise ImportError("--tensorboard needs the 'tensorboard' package: pip install tensorboard "
                                      "(or pip install 'metaopt-torch[tensorboard]')") from err
            if wandb is not None:
                try:
                    loggers.require("wandb")
                except ImportError as err:
                    raise ImportError("--wandb needs the 'wandb' package: pip install 'metaopt-torch[wandb]'") from err
            lock.acquire()
            try:
                check_fresh_out_dir(out, resume=resume, overwrite=overwrite)  # again, now that no one else writes
                if resume:
                    state = load_checkpoint(ckpt, cfg, learner)
            except BaseException:
                lock.release(clean=True)
                raise
        except (ValueError, ImportError) as err:
            error = err
    if comm is not None:
        try:
            error, state = comm.broadcast_object((error, state))
        except BaseException:
            if lock is not None:
                lock.release(clean=True)
            raise
    if error is not None:
        raise error
    try:
        return _train(cfg, out, learner, state, comm=comm, overwrite=overwrite, checkpoint_every=checkpoint_every,
                      progress=progress, plot=plot, tensorboard=tensorboard, wandb=wandb, wandb_mode=wandb_mode,
                      log=log, stop_after=stop_after)
    finally:
        if lock is not None:
            lock.release()


class _MetaParamsError(NonFiniteError):
    """The outer step itself made a parameter or the inner lr non-finite (the learner holds the bad values)."""


def _nonfinite_meta(learner: MetaLearner) -> list[str]:
    """What an outer step left non-finite: parameter names, and an lr that overflowed or underflowed."""
    bad = [n for n, p in learner.named_parameters() if not bool(torch.isfinite(p).all())]
    lr = learner.meta.lr
    for name, value in (lr.items() if isinstance(lr, dict) else [("lr", lr)]):
        v = float(value.detach())
        if not (v > 0 and v < float("inf")):
            bad.append(f"{name}={v}" if name == "lr" else f"lr[{name}]={v}")
    return bad


def _train(cfg: MAMLConfig, out: Path, learner: MetaLearner, state: dict[str, Any] | None, *,
           comm: dist_lib.Communicator | None, overwrite: bool, checkpoint_every: int, progress: bool, plot: bool,
           tensorboard: bool, wandb: str | None, wandb_mode: str | None, log: Callable[[str], None],
           stop_after: int | None) -> TrainResult:
    """The body of :func:`train` once rank 0 holds ``out``'s lock."""
    main = comm is None or comm.rank == 0
    say = log if main else (lambda _text: None)
    ckpt = out / CHECKPOINT
    history: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    last_good: int | None = None  # iteration of the checkpoint on disk that this run wrote or resumed from
    if state is not None:
        learner.load_state_dict(state)
        history = state["history"] if main else {"train": [], "eval": []}
        last_good = learner.iteration
        done, evals = learner.iteration, history["eval"]
        if (evals and evals[-1]["iteration"] == done < cfg.iterations
                and not (cfg.eval_every and done % cfg.eval_every == 0)):
            evals.pop()  # the evaluation that ended the shorter run: an uninterrupted run has none there
        say(f"resumed from {ckpt} at iteration {learner.iteration}")
    del state

    progress_ = {"last_good": last_good}

    def where() -> str:
        good = progress_["last_good"]
        return (f"the last good checkpoint is {ckpt} (iteration {good})" if good is not None
                else "no checkpoint was written before the failure")

    try:
        return _train_loop(cfg, out, learner, history, progress_, where, comm=comm, overwrite=overwrite,
                           checkpoint_every=checkpoint_every, progress=progress, plot=plot, tensorboard=tensorboard,
                           wandb=wandb, wandb_mode=wandb_mode, say=say, stop_after=stop_after)
    except OSError as err:
        raise _WriteFault(f"writing into {str(out)!r} failed ({err}); stopped, {where()}") from err
    except dist_lib.CollectiveError as err:
        raise RunFault(f"{err}; stopped, {where()}") from err
    except (torch.OutOfMemoryError, MemoryError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunFault(f"out of memory at iteration {learner.iteration + 1} ({first[:200]}); stopped, "
                       f"{where()}") from err


def _train_loop(cfg: MAMLConfig, out: Path, learner: MetaLearner, history: dict[str, list[dict[str, Any]]],
                progress_: dict[str, int | None], where: Callable[[], str], *, comm: dist_lib.Communicator | None,
                overwrite: bool, checkpoint_every: int, progress: bool, plot: bool, tensorboard: bool,
                wandb: str | None, wandb_mode: str | None, say: Callable[[str], None], stop_after: int | None
                ) -> TrainResult:
    main = comm is None or comm.rank == 0
    ckpt = out / CHECKPOINT
    if comm is not None:
        comm.check_replicated(_replicated(learner), learner.iteration)
    writer: loggers.MultiLogger | None = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear_previous_run(out)
        remove_stale_temporaries(out, ARTIFACTS)
        write_json(out / "config.json", cfg.to_dict())
        backends: list[loggers.Logger] = []
        if tensorboard:
            backends.append(loggers.TensorBoardLogger(out / "tb"))
        if wandb is not None:
            name = f"{_ENV_NAMES[cfg.env]}__maml-rl__{cfg.seed}"
            backends.append(loggers.WandbLogger(wandb, name=name, config=cfg.to_dict(), mode=wandb_mode))
        writer = loggers.MultiLogger(backends) if backends else None

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=learner.iteration, desc="maml-rl", dynamic_ncols=True)
    start, status, message = time.perf_counter(), "completed", None
    meta_after: dict[str, Any] | None = None
    done = None

    def flush() -> None:
        write_csv(out / "metrics.csv", history["train"])
        if history["eval"]:
            write_csv(out / "eval.csv", history["eval"])

    try:
        while learner.iteration < cfg.iterations:
            row = learner.step() if comm is None else _distributed_step(learner, comm)
            i = learner.iteration
            bad = _nonfinite_meta(learner)  # the same on every rank (replicated state)
            if bad:
                raise _MetaParamsError(f"the outer step of iteration {i} made the meta-parameters non-finite "
                                     f"({', '.join(bad)}; a smaller --meta-lr or --outer-lr?)", i, [])
            stopping = stop_after is not None and i >= stop_after
            if main:
                history["train"].append(row)
                if cfg.eval_every and i % cfg.eval_every == 0 or i == cfg.iterations:
                    history["eval"].append({"iteration": i} | learner.evaluate())
                if writer is not None:
                    last_eval = history["eval"][-1] if history["eval"] and history["eval"][-1]["iteration"] == i else {}
                    writer.log(_namespaced(row | last_eval), step=i)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(pre=f"{row['train_pre_return']:.2f}", post=f"{row['train_post_return']:.2f}",
                                    beta=f"{row['beta']:.3g}", lr=f"{row['lr']:.3g}")
                elif i % max(1, cfg.iterations // 20) == 0 or i == cfg.iterations:
                    say(f"it {i:>5}  pre {row['train_pre_return']:8.3f}  post {row['train_post_return']:8.3f}  "
                        f"beta {row['beta']:.4g}  lr {row['lr']:.4g}  {row['time_s']:.2f}s/it")
            if i % checkpoint_every == 0 or i == cfg.iterations or stopping:
                if comm is not None:
                    comm.check_replicated(_replicated(learner), learner.iteration)
                if main:
                    save_checkpoint(ckpt, learner, history)
                    flush()
                progress_["last_good"] = i
            if stopping:
                status = "stopped"
                break
    except NonFiniteError as err:
        status = "non-finite"
        message = f"{err}; stopped, {where()}"
        say(f"stopped: {message}")
        if isinstance(err, _MetaParamsError):  # report the last finite meta-parameters, not the learner's
            meta_after = history["train"][-1] if history["train"] else {"lr": cfg.inner_lr, "beta": cfg.beta}
            done = learner.iteration - 1
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    summary = _summary(cfg, learner, history["eval"], time.perf_counter() - start, history["train"]) \
        | {"status": status}
    if meta_after is not None:
        summary |= {"iterations": done, "lr": meta_after["lr"], "beta": meta_after["beta"]}
    written: list[str] = []
    if main:
        if history["train"]:
            flush()
        write_json(out / "metrics.json", {"config": cfg.to_dict(), "summary": summary, **history}, indent=1)
        if plot and history["train"]:
            from metaopt.experiments.maml_plots import plot_run

            plot_run(out, history["train"], history["eval"], cfg)
        written = [name for name in ARTIFACTS if (out / name).is_file()]
    return TrainResult(cfg, history["train"], history["eval"], summary, out, learner, status, message, written)


def _namespaced(row: dict[str, Any]) -> dict[str, float]:
    """Scalar names for TensorBoard/W&B (cleanrl's namespaces).

    ``train/pre_return``, ``eval/...``, ``meta/beta``, ``meta/grad_logit_beta``, ``health/live_units``.
    """
    out = {}
    for k, v in row.items():
        if k == "iteration":
            continue
        if k in ("lr", "beta") or k.startswith("grad_"):
            out[f"meta/{k}"] = v
        elif k in ("live_units", "logit_spread"):
            out[f"health/{k}"] = v
        elif k.startswith("test_"):
            out[f"eval/{k}"] = v
        else:
            out[f"train/{k.removeprefix('train_')}"] = v
    return out


def _replicated(learner: MetaLearner) -> list[torch.Tensor]:
    """The state every rank must hold identically: parameters, outer Adam moments, the generator."""
    tensors = [*learner.parameters(), learner.generator.get_state()]
    for s in learner.optimizer.state.values():
        tensors += [v for _, v in sorted(s.items()) if isinstance(v, torch.Tensor)]
    return tensors


def format_summary(result: TrainResult) -> str:
    """The end-of-run table."""
    s = result.summary
    rows = [("status", s["status"]), ("iterations", s["iterations"]), ("wall time [s]", s["wall_time_s"])]
    for key in ("test_pre_return", "test_post_return", "adaptation_gain", "test_pre_return_norm",
                "test_post_return_norm", "adaptation_gain_norm", "beta", "lr", "live_units", "logit_spread",
                "beta_grad_ratio_first10", "beta_grad_t_first50", "beta_grad_t_last50", "beta_grad_zeros"):
        if key in s:
            rows.append((key, f"{s[key]:.4g}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# ------------------------------------------------------------------------------------------------- CLI
def _worker(comm: dist_lib.Communicator, args: argparse.Namespace) -> int:
    return run(args, comm=comm)


def run(args: argparse.Namespace, comm: dist_lib.Communicator | None = None) -> int:
    """CLI entry point (also each rank's entry point in a distributed run).

    Returns:
        0 (completed), 2 (bad input: one ``error:`` line on stderr, nothing written), 3 (a non-finite loss,
        meta-gradient or meta-parameter stopped the run; the checkpoint on disk is the last good one) or 4 (a
        runtime fault: a failed write, memory, a dead or frozen process; one line naming the last good checkpoint).

    Raises:
        RunFault: in a worker of ``--nproc`` (the launcher prints its one line and stops the other workers).
    """
    main = comm is None or comm.rank == 0

    def error(text: object) -> None:
        if main:
            print(f"metaopt maml-rl: error: {text}", file=sys.stderr)

    try:
        cfg = config_from_args(args)
        check_plotting(not args.no_plot)  # before any work: the plots come after training
        check_int("--checkpoint-every", args.checkpoint_every, low=1)
        check_int("--nproc", args.nproc, low=1)
        dist_lib.check_timeout("--dist-timeout", args.dist_timeout)
        if comm is None:
            if args.nproc > cfg.tasks:
                raise ValueError(f"--nproc must be <= --tasks ({cfg.tasks}) so that every process has a task, "
                                 f"got {args.nproc}")
            check_fresh_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
            if args.nproc > 1:
                return dist_lib.launch(_worker, args.nproc, args, prog="metaopt maml-rl", timeout=args.dist_timeout)
        elif args.nproc not in (1, comm.world_size):
            raise ValueError(f"--nproc must be left out (or equal the {comm.world_size} processes torchrun "
                             f"started), got {args.nproc}")
        result = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                       checkpoint_every=args.checkpoint_every, progress=not args.no_progress and sys.stderr.isatty(),
                       plot=not args.no_plot, tensorboard=args.tensorboard, wandb=args.wandb,
                       wandb_mode=args.wandb_mode, log=print if main else (lambda _t: None),
                       comm=comm)
    except (ValueError, ImportError) as err:
        error(err)
        return 2
    except RunFault as err:
        if comm is not None:
            raise  # the launcher (or main() under torchrun) reports it and ends every process
        error(err)
        return 4
    if main:
        print(format_summary(result))
        print(f"artifacts in {result.out}/: {', '.join(result.written)}")
    if result.status == "non-finite":
        error(result.error)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m metaopt.experiments.maml_rl``: the CLI; under ``torchrun`` one rank of a distributed run."""
    parser = ArgumentParser(prog="metaopt maml-rl", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not dist_lib.started_by_torchrun():
        return run(args)
    try:
        dist_lib.check_timeout("--dist-timeout", args.dist_timeout)
        comm = dist_lib.init_from_env(config_from_args(args).device, timeout=args.dist_timeout)
    except (RuntimeError, ValueError) as err:
        print(f"metaopt maml-rl: error: {err}", file=sys.stderr)
        return 2
    try:
        code = run(args, comm=comm)
        comm.barrier()  # leave together
    except (RunFault, dist_lib.CollectiveError) as err:
        # One line, then leave at once: a teardown would wait on the dead or frozen peer.
        print(f"metaopt maml-rl: error: {err}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(4)
    dist_lib.shutdown()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
