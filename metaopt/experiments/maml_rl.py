"""``metaopt maml-rl``: MAML-A2C on TabularMDP or 2D navigation (``--env``) with PopArt, learning beta and the inner lr.

Writes into ``--out``: ``config.json`` (the resolved configuration), ``metrics.csv`` (one row per
iteration), ``eval.csv`` (test-task evaluations), ``metrics.json`` (both plus the summary), ``returns.png``
and ``meta_params.png``, and ``checkpoint.pt`` every ``--checkpoint-every`` iterations (every file written
atomically, see :mod:`metaopt.artifacts`). ``--resume`` continues from ``checkpoint.pt`` bit-identically. An
``--out`` that already holds files is refused unless ``--resume`` or ``--overwrite`` is given.

``--nproc N`` shards each iteration's tasks over ``N`` local processes (:mod:`metaopt.distributed`); on several
machines run ``torchrun [torchrun flags] -m metaopt.experiments.maml_rl [flags]``. The results match a
one-process run.

Exit codes: 0 done, 2 bad input (one ``error:`` line naming the flag, its value and what was expected;
nothing written), 3 a non-finite loss or meta-gradient stopped the run (the message names the iteration
and the tasks; ``checkpoint.pt`` stays the last good one).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from metaopt.artifacts import atomic_write, check_out_dir, remove_stale_temporaries, write_csv, write_json
from metaopt.dataclass_args import add_dataclass_arguments, dataclass_flags, dataclass_overrides
from metaopt.maml import MAMLConfig, MetaLearner, NonFiniteError, check_finite, nonfinite_gradient_tasks

__all__ = ["PRESETS", "CHECKPOINT", "ARTIFACTS", "add_arguments", "run", "train", "config_from_args",
           "TrainResult", "atomic_write", "save_checkpoint", "load_checkpoint", "format_summary", "main"]

#: Named configurations; explicit command-line values override them.
PRESETS: dict[str, dict[str, Any]] = {
    # TorchOpt's MAML-RL example: 40 tasks x 20 trajectories, 500 iterations, inner lr 0.1, no PopArt.
    "reference": {},
    # The project's job in the setting PopArt exists for: scaled TabularMDP (rewards x 10^U(-2, 3)), PopArt with
    # the recommended options (the MAMLConfig defaults), learning beta and one inner lr per parameter tensor from the
    # policy objective (one shared lr kills the body once it grows past ~10: see the README's results).
    "demo": {"popart": True, "learn": ("beta", "lr"), "lr_per_parameter": True, "scaled": True, "iterations": 500,
             "eval_every": 50},
    # CI smoke run.
    "smoke": {"popart": True, "learn": ("beta", "lr"), "lr_per_parameter": True, "iterations": 3, "tasks": 4,
              "trajectories": 4, "eval_every": 2, "eval_tasks": 4},
}
CHECKPOINT = "checkpoint.pt"
#: The task family's name in run names (``--wandb``), by ``MAMLConfig.env``.
_ENV_NAMES = {"tabular": "TabularMDP", "pointnav2d": "PointNav2D"}
FORMAT = "metaopt.maml_rl/2"
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
                   help="also log scalars to OUT/tb (needs pip install 'metaopt[tensorboard]')")
    g.add_argument("--wandb", metavar="PROJECT", default=None,
                   help="also log scalars to a Weights & Biases run in PROJECT (needs pip install 'metaopt[wandb]')")
    g.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default=None,
                   help="W&B mode (default: W&B's own, i.e. the WANDB_MODE environment variable)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    g.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    g.add_argument("--nproc", type=int, default=1,
                   help="local processes: the tasks are sharded over them and the meta-gradients all-reduced (gloo "
                        "on CPU); for several machines use torchrun -m metaopt.experiments.maml_rl (default: 1)")


#: Configuration field -> command-line flag, for error messages.
FLAGS = dataclass_flags(MAMLConfig)


def config_from_args(args: argparse.Namespace) -> MAMLConfig:
    """Resolve preset + explicit flags into a validated :class:`MAMLConfig` (errors name the flags)."""
    return MAMLConfig(**(PRESETS[args.preset] | dataclass_overrides(MAMLConfig, args))).validate(names=FLAGS)


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, learner: MetaLearner, history: dict[str, list[dict[str, Any]]]) -> None:
    """Atomically save everything needed for an exact resume."""
    state = learner.state_dict() | {"history": history, "format": FORMAT}
    atomic_write(path, lambda f: torch.save(state, f))


_CHECKPOINT_KEYS = ("config", "iteration", "model", "meta", "optimizer", "generator", "history")


def load_checkpoint(path: Path, cfg: MAMLConfig) -> dict[str, Any]:
    """Load and check a checkpoint against ``cfg`` (every field but ``iterations`` and ``device`` must match).

    Loads with ``weights_only=True`` (tensors and plain containers only) onto ``cfg``'s device, so a checkpoint
    written on a GPU resumes on a CPU and the other way round.
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
        raise ValueError(f"checkpoint {str(path)!r} is not a metaopt maml-rl checkpoint (expected format "
                         f"{FORMAT!r}, got {state.get('format') if isinstance(state, dict) else None!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is incomplete: missing {missing}")
    saved, now = state["config"], cfg.validate().to_dict()
    diff = {k: (saved.get(k), now[k]) for k in now if k not in ("iterations", "device") and saved.get(k) != now[k]}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {str(path)!r} was made with a different configuration ({detail})")
    return state


def check_fresh_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that holds files unless resuming or overwriting (nothing is touched here)."""
    check_out_dir(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: resume continues the run in --out, "
                         "overwrite starts a new one there")
    if out.is_dir() and not resume and not overwrite and any(out.iterdir()):
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


def _summary(cfg: MAMLConfig, learner: MetaLearner, eval_rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    s: dict[str, Any] = {"iterations": learner.iteration, "wall_time_s": round(wall, 2)} | learner.meta.summary()
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
        plot: Write PNG plots.
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
    check_int("checkpoint_every", checkpoint_every, low=1)
    check_int("stop_after", stop_after, low=1, allow_none=True)
    if comm is not None and comm.world_size > cfg.tasks:
        raise ValueError(f"tasks must be >= the number of processes ({comm.world_size}) so that every process "
                         f"has a task, got {cfg.tasks}")
    main = comm is None or comm.rank == 0
    say = log if main else (lambda _text: None)
    learner = MetaLearner(cfg)
    ckpt = out / CHECKPOINT

    # Checks of what lives on rank 0's machine; all ranks share the outcome (fail together or resume together).
    error: BaseException | None = None
    state: dict[str, Any] | None = None
    if main:
        try:
            check_fresh_out_dir(out, resume=resume, overwrite=overwrite)
            if tensorboard:
                try:
                    loggers.require("tensorboard")
                except ImportError as err:
                    raise ImportError("--tensorboard needs the 'tensorboard' package: pip install tensorboard "
                                      "(or pip install 'metaopt[tensorboard]')") from err
            if wandb is not None:
                try:
                    loggers.require("wandb")
                except ImportError as err:
                    raise ImportError("--wandb needs the 'wandb' package: pip install 'metaopt[wandb]'") from err
            if resume:
                state = load_checkpoint(ckpt, cfg)
        except (ValueError, ImportError) as err:
            error = err
    if comm is not None:
        error, state = comm.broadcast_object((error, state))
    if error is not None:
        raise error

    history: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    last_good: int | None = None  # iteration of the checkpoint on disk that this run wrote or resumed from
    if state is not None:
        learner.load_state_dict(state)
        history = state["history"] if main else {"train": [], "eval": []}
        last_good = learner.iteration
        say(f"resumed from {ckpt} at iteration {learner.iteration}")
    del state
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

    def flush() -> None:
        write_csv(out / "metrics.csv", history["train"])
        if history["eval"]:
            write_csv(out / "eval.csv", history["eval"])

    try:
        while learner.iteration < cfg.iterations:
            row = learner.step() if comm is None else _distributed_step(learner, comm)
            i = learner.iteration
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
                last_good = i
            if stopping:
                status = "stopped"
                break
    except NonFiniteError as err:
        status = "non-finite"
        where = (f"the last good checkpoint is {ckpt} (iteration {last_good})" if last_good is not None
                 else "no checkpoint was written before the failure")
        message = f"{err}; stopped, {where}"
        say(f"stopped: {message}")
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    summary = _summary(cfg, learner, history["eval"], time.perf_counter() - start) | {"status": status}
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
    """Scalar names for TensorBoard/W&B (cleanrl's namespaces): ``train/pre_return``, ``eval/...``, ``meta/beta``."""
    out = {}
    for k, v in row.items():
        if k == "iteration":
            continue
        if k in ("lr", "beta"):
            out[f"meta/{k}"] = v
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
                "test_post_return_norm", "adaptation_gain_norm", "beta", "lr"):
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
        0 (completed), 2 (bad input: one ``error:`` line on stderr, nothing written) or 3 (a non-finite loss
        or meta-gradient stopped the run; the checkpoint on disk is the last good one).
    """
    main = comm is None or comm.rank == 0

    def error(text: object) -> None:
        if main:
            print(f"metaopt maml-rl: error: {text}", file=sys.stderr)

    try:
        cfg = config_from_args(args)
        check_int("--checkpoint-every", args.checkpoint_every, low=1)
        check_int("--nproc", args.nproc, low=1)
        if comm is None:
            if args.nproc > cfg.tasks:
                raise ValueError(f"--nproc must be <= --tasks ({cfg.tasks}) so that every process has a task, "
                                 f"got {args.nproc}")
            check_fresh_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
            if args.nproc > 1:
                return dist_lib.launch(_worker, args.nproc, args, prog="metaopt maml-rl")
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
    if main:
        print(format_summary(result))
        print(f"artifacts in {result.out}/: {', '.join(result.written)}")
    if result.status == "non-finite":
        error(result.error)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m metaopt.experiments.maml_rl``: the CLI; under ``torchrun`` one rank of a distributed run."""
    parser = argparse.ArgumentParser(prog="metaopt maml-rl", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not dist_lib.started_by_torchrun():
        return run(args)
    try:
        comm = dist_lib.init_from_env(config_from_args(args).device)
    except (RuntimeError, ValueError) as err:
        print(f"metaopt maml-rl: error: {err}", file=sys.stderr)
        return 2
    try:
        code = run(args, comm=comm)
        comm.barrier()  # leave together
        return code
    finally:
        dist_lib.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
