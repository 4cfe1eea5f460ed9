"""``metaopt maml-rl``: MAML-A2C on TabularMDP with PopArt, learning beta and the inner lr.

Writes into ``--out``: ``config.json`` (the resolved configuration), ``metrics.csv`` (one row per
iteration), ``eval.csv`` (test-task evaluations), ``metrics.json`` (both plus the summary),
``returns.png`` and ``meta_params.png``, and ``checkpoint.pt`` every ``--checkpoint-every`` iterations
(every file written atomically: a crash or ``kill -9`` never leaves a partial one). ``--resume``
continues from ``checkpoint.pt`` bit-identically (model, meta-parameters, outer Adam state, generator,
metrics; PopArt statistics are per task and iteration, so there are none to carry).

``--nproc N`` shards each iteration's tasks over ``N`` local processes (:mod:`metaopt.distributed`;
``torchrun -m metaopt.distributed`` for several machines); the results match a one-process run.

Exit codes: 0 done, 2 bad input (one ``error:`` line naming the flag, its value and what was expected;
nothing written), 3 a non-finite loss or meta-gradient stopped the run (the message names the iteration
and the tasks; ``checkpoint.pt`` stays the last good one).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from metaopt.engines import ENGINES
from metaopt.maml import MAMLConfig, MetaLearner, NonFiniteError

if TYPE_CHECKING:
    from metaopt.distributed import Communicator

__all__ = ["PRESETS", "add_arguments", "run", "train", "config_from_args", "TrainResult", "atomic_write"]

#: Named configurations; explicit command-line values override them.
PRESETS: dict[str, dict[str, Any]] = {
    # TorchOpt's MAML-RL example: 40 tasks x 20 trajectories, 500 iterations, inner lr 0.1, no PopArt.
    "reference": {},
    # The project's job in the setting PopArt exists for (about a minute on 2 cores): scaled TabularMDP
    # (rewards x 10^U(-2, 3)), PopArt-normalized value loss, learning beta and the inner lr (meta lr 0.01).
    "demo": {"popart": True, "learn": ("beta", "lr"), "scaled": True, "popart_advantages": False,
             "meta_lr": 0.01, "iterations": 1000, "eval_every": 100},
    # CI smoke run.
    "smoke": {"popart": True, "learn": ("beta", "lr"), "iterations": 3, "tasks": 4, "trajectories": 4,
              "eval_every": 2, "eval_tasks": 4},
}

CHECKPOINT = "checkpoint.pt"


def _learn(value: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    if items in ((), ("none",)):
        return ()
    bad = [x for x in items if x not in ("lr", "beta")]
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of lr,beta (or 'none'), got {value!r} (unknown: {bad})"
        )
    return items


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``maml-rl`` arguments (config fields default to the preset's value)."""
    d = MAMLConfig()
    p.add_argument("--preset", choices=sorted(PRESETS), default="reference",
                   help="named configuration; explicit flags override it")
    p.add_argument("--engine", choices=ENGINES, default=None, help=f"meta-gradient engine (default {d.engine})")
    p.add_argument("--learn", type=_learn, default=None,
                   help="meta-parameters to learn besides theta_0: comma list of lr,beta, or 'none'")
    p.add_argument("--popart", action=argparse.BooleanOptionalAction, default=None,
                   help="PopArt value normalization in the inner and outer loss")
    p.add_argument("--scaled", action=argparse.BooleanOptionalAction, default=None,
                   help="scaled TabularMDP: rewards times c = 10^u, u ~ U(scale-lo, scale-hi)")
    p.add_argument("--scale-lo", type=float, default=None, help=f"(default {d.scale_lo})")
    p.add_argument("--scale-hi", type=float, default=None, help=f"(default {d.scale_hi})")
    p.add_argument("--tasks", type=int, default=None, help=f"tasks per meta-iteration (default {d.tasks})")
    p.add_argument("--trajectories", type=int, default=None, help=f"episodes per task (default {d.trajectories})")
    p.add_argument("--iterations", type=int, default=None, help=f"meta-iterations (default {d.iterations})")
    p.add_argument("--inner-steps", type=int, default=None, help=f"inner steps K (default {d.inner_steps})")
    p.add_argument("--inner-lr", type=float, default=None, help=f"initial inner lr (default {d.inner_lr})")
    p.add_argument("--inner-optimizer", choices=("sgd", "adam"), default=None, help="inner optimizer (default sgd)")
    p.add_argument("--inner-momentum", type=float, default=None, help="inner SGD momentum (default 0)")
    p.add_argument("--beta", type=float, default=None, help=f"initial PopArt beta (default {d.beta})")
    p.add_argument("--outer-lr", type=float, default=None, help=f"outer Adam lr of theta_0 (default {d.outer_lr})")
    p.add_argument("--meta-lr", type=float, default=None,
                   help="outer Adam lr of the learned log_lr/logit_beta (default: --outer-lr)")
    p.add_argument("--popart-advantages", action=argparse.BooleanOptionalAction, default=None,
                   help="with PopArt, divide the policy's advantages by sigma (default on); off: only the value "
                        "loss is normalized")
    p.add_argument("--first-order", action=argparse.BooleanOptionalAction, default=None,
                   help="first-order meta-gradients")
    p.add_argument("--truncate", type=int, default=None, help="backpropagate through the last k inner steps only")
    p.add_argument("--eval-every", type=int, default=None, help=f"evaluate every N iterations (default {d.eval_every})")
    p.add_argument("--eval-tasks", type=int, default=None, help=f"test tasks (default {d.eval_tasks})")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None, help="(default float32)")
    p.add_argument("--seed", type=int, default=None, help=f"seed of everything (default {d.seed})")
    p.add_argument("--out", type=Path, default=Path("runs/maml_rl"), help="output directory")
    p.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
    p.add_argument("--checkpoint-every", type=int, default=25, help="checkpoint period in iterations")
    p.add_argument("--tensorboard", action="store_true", help="also log scalars to OUT/tb (needs tensorboard)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--nproc", type=int, default=1,
                   help="local processes for distributed meta-training: the tasks are sharded over them, the "
                        "meta-gradients all-reduced (gloo on CPU); for several machines use torchrun -m "
                        "metaopt.distributed")


_FIELD_ARGS = {
    "engine": "engine", "learn": "learn", "popart": "popart", "scaled": "scaled", "scale_lo": "scale_lo",
    "scale_hi": "scale_hi", "tasks": "tasks", "trajectories": "trajectories", "iterations": "iterations",
    "inner_steps": "inner_steps", "inner_lr": "inner_lr", "inner_optimizer": "inner_optimizer",
    "inner_momentum": "inner_momentum", "beta": "beta", "outer_lr": "outer_lr", "meta_lr": "meta_lr",
    "popart_advantages": "popart_advantages", "first_order": "first_order",
    "truncate": "truncate", "eval_every": "eval_every", "eval_tasks": "eval_tasks", "dtype": "dtype", "seed": "seed",
}


#: Configuration field -> command-line flag, for error messages.
FLAGS = {f: "--" + a.replace("_", "-") for f, a in _FIELD_ARGS.items()}


def config_from_args(args: argparse.Namespace) -> MAMLConfig:
    """Resolve preset + explicit flags into a validated :class:`MAMLConfig` (errors name the flags)."""
    values = dict(PRESETS[args.preset])
    for field_name, arg_name in _FIELD_ARGS.items():
        v = getattr(args, arg_name)
        if v is not None:
            values[field_name] = v
    return MAMLConfig(**values).validate(names=FLAGS)


# ------------------------------------------------------------------------------------------------- io
def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file atomically: into a temporary file in the same directory, then ``os.replace``.

    Readers (and a run resumed after a crash or ``kill -9``) see either the old or the new file, never a
    partial one. If ``write`` raises, the old file is untouched and the temporary file is removed; a
    process killed mid-write can leave a ``.NAME.XXXXXXXX`` temporary, which :func:`train` removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


_ARTIFACTS = ("checkpoint.pt", "config.json", "metrics.csv", "eval.csv", "metrics.json", "returns.png",
              "meta_params.png")
_STALE_TMP = re.compile(r"\.(" + "|".join(re.escape(a) for a in _ARTIFACTS) + r")\.[A-Za-z0-9_]{8}")


def _remove_stale_temporaries(out: Path) -> None:
    """Remove temporaries of :func:`atomic_write` left by a process killed mid-write."""
    for p in out.iterdir():
        if _STALE_TMP.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _csv_text(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def check_out_dir(out: Path) -> None:
    """Fail early, before anything is written, if ``out`` cannot be an output directory."""
    p = out
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ValueError(f"--out must be a directory path, got {str(out)!r} ({str(p)!r} is a file)")
    if not os.access(p, os.W_OK):
        raise ValueError(f"--out must be writable, got {str(out)!r} ({str(p)!r} is not writable)")


def save_checkpoint(path: Path, learner: MetaLearner, history: dict[str, list[dict[str, Any]]]) -> None:
    """Atomically save everything needed for an exact resume."""
    state = learner.state_dict() | {"history": history, "format": "metaopt.maml_rl/1"}
    atomic_write(path, lambda f: torch.save(state, f))


_CHECKPOINT_KEYS = ("config", "iteration", "model", "meta", "optimizer", "generator", "history")


def load_checkpoint(path: Path, cfg: MAMLConfig) -> dict[str, Any]:
    """Load and check a checkpoint against ``cfg`` (every field but ``iterations`` must match).

    Loads with ``weights_only=True`` (tensors and plain containers only; no arbitrary pickles).
    """
    if not path.is_file():
        raise ValueError(f"--resume needs a checkpoint at {str(path)!r}, but there is none")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"checkpoint {str(path)!r} is unreadable, expected a file written by metaopt maml-rl "
                         f"({type(err).__name__}: {first})") from err
    if not isinstance(state, dict) or state.get("format") != "metaopt.maml_rl/1":
        raise ValueError(f"checkpoint {str(path)!r} is not a metaopt maml-rl checkpoint (expected format "
                         f"'metaopt.maml_rl/1', got {state.get('format') if isinstance(state, dict) else None!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is incomplete: missing {missing}")
    saved, now = state["config"], cfg.to_dict()
    diff = {k: (saved.get(k), now[k]) for k in now if k != "iterations" and saved.get(k) != now[k]}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {str(path)!r} was made with a different configuration ({detail})")
    return state


# ---------------------------------------------------------------------------------------------- plots
def _plot(out: Path, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], cfg: MAMLConfig) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def smooth(x: list[float], w: int = 10) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if len(a) < w:
            return a
        c = np.cumsum(np.insert(a, 0, 0.0))
        head = c[1:w] / np.arange(1, w)
        return np.concatenate([head, (c[w:] - c[:-w]) / w])

    it = [r["iteration"] for r in train_rows]
    suffix = "_norm" if cfg.scaled else ""
    label = "return / c" if cfg.scaled else "return"
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, name, color in ((f"train_pre_return{suffix}", "train pre", "tab:blue"),
                             (f"train_post_return{suffix}", "train post", "tab:orange")):
        ax.plot(it, smooth([r[key] for r in train_rows]), color=color, alpha=0.8, label=f"{name} (10-it. mean)")
    if eval_rows:
        ei = [r["iteration"] for r in eval_rows]
        ax.plot(ei, [r[f"test_pre_return{suffix}"] for r in eval_rows], "o--", color="tab:blue", label="test pre")
        ax.plot(ei, [r[f"test_post_return{suffix}"] for r in eval_rows], "o--", color="tab:orange", label="test post")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(label)
    ax.set_title(f"MAML-A2C on TabularMDP ({'PopArt' if cfg.popart else 'no PopArt'}, engine={cfg.engine})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [out / "returns.png"]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(paths[0], lambda f: f.write(buf.getvalue()))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("beta", "lr"), strict=True):
        ax.plot(it, [r[key] for r in train_rows])
        ax.set_xlabel("meta-iteration")
        ax.set_title(f"{key} ({'learned' if key in cfg.learn else 'fixed'})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    paths.append(out / "meta_params.png")
    atomic_write(paths[1], lambda f: f.write(buf.getvalue()))
    return paths


# ---------------------------------------------------------------------------------------------- train
@dataclasses.dataclass
class TrainResult:
    """What a run produced."""

    config: MAMLConfig
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path
    learner: MetaLearner
    status: str = "completed"
    error: str | None = None


def _summary(cfg: MAMLConfig, learner: MetaLearner, eval_rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    s: dict[str, Any] = {"iterations": learner.iteration, "wall_time_s": round(wall, 2)} | learner.meta.summary()
    if eval_rows:
        last = eval_rows[-1]
        s |= {k: v for k, v in last.items() if k.startswith("test_")}
        s["adaptation_gain"] = last["test_post_return"] - last["test_pre_return"]
        if cfg.scaled:
            s["adaptation_gain_norm"] = last["test_post_return_norm"] - last["test_pre_return_norm"]
    return s


def train(
    cfg: MAMLConfig,
    out: Path,
    *,
    resume: bool = False,
    checkpoint_every: int = 25,
    progress: bool = True,
    plot: bool = True,
    tensorboard: bool = False,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    comm: Communicator | None = None,
) -> TrainResult:
    """Run (or resume) MAML-A2C training and write the artifacts into ``out``.

    Every input is checked before anything is written: a bad configuration, output directory or
    checkpoint raises ``ValueError`` (a missing optional package ``ImportError``) and leaves no files.
    A non-finite loss or meta-gradient stops the run cleanly (``status="non-finite"``, the message in
    ``error``): the checkpoint on disk stays the last good one.

    Args:
        cfg: The configuration.
        out: Output directory.
        resume: Continue from ``out/checkpoint.pt`` (bit-identical to an uninterrupted run).
        checkpoint_every: Checkpoint period (iterations); a checkpoint is also written at the end.
        progress: Show a progress bar.
        plot: Write PNG plots.
        tensorboard: Log scalars to ``out/tb``.
        log: Where text goes.
        stop_after: Stop (as if interrupted, after checkpointing) once this iteration is done (for tests).
        comm: Distributed meta-training (:class:`metaopt.distributed.Communicator`): this rank's share of
            the tasks; rank 0 alone evaluates, logs and writes.

    Returns:
        A :class:`TrainResult` (on ranks other than 0 without rows).
    """
    cfg.validate()
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"stop_after must be None or an int >= 1, got {stop_after!r}")
    if comm is not None and comm.world_size > cfg.tasks:
        raise ValueError(f"tasks must be >= the number of processes ({comm.world_size}) so that every process "
                         f"has a task, got {cfg.tasks}")
    main = comm is None or comm.rank == 0
    say = log if main else (lambda _text: None)
    learner = MetaLearner(cfg)
    ckpt = out / CHECKPOINT

    # Checks of what lives on rank 0's machine (the output directory, the checkpoint); all ranks share
    # the outcome, so they fail together with rank 0's message or all resume from its checkpoint.
    error: BaseException | None = None
    state: dict[str, Any] | None = None
    summary_writer: Any = None
    if main:
        try:
            check_out_dir(out)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter as summary_writer
                except ImportError as err:
                    raise ImportError("--tensorboard needs the 'tensorboard' package: pip install tensorboard") from err
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
        comm.check_replicated(learner)
    writer = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
        _write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        if tensorboard:
            writer = summary_writer(str(out / "tb"))

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=learner.iteration, desc="maml-rl", dynamic_ncols=True)
    start = time.perf_counter()
    status = "completed"
    message: str | None = None
    step_kwargs = comm.step_kwargs(cfg.tasks) if comm is not None else {}

    def flush() -> None:
        _write_text(out / "metrics.csv", _csv_text(history["train"]))
        if history["eval"]:
            _write_text(out / "eval.csv", _csv_text(history["eval"]))

    try:
        while learner.iteration < cfg.iterations:
            row = learner.step(**step_kwargs)
            i = learner.iteration
            stopping = stop_after is not None and i >= stop_after
            if main:
                history["train"].append(row)
                if cfg.eval_every and i % cfg.eval_every == 0 or i == cfg.iterations:
                    history["eval"].append({"iteration": i} | learner.evaluate())
                if writer is not None:
                    last_eval = history["eval"][-1] if history["eval"] and history["eval"][-1]["iteration"] == i else {}
                    for k, v in (row | last_eval).items():
                        if k != "iteration":
                            writer.add_scalar(k, v, i)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(pre=f"{row['train_pre_return']:.2f}", post=f"{row['train_post_return']:.2f}",
                                    beta=f"{row['beta']:.3g}", lr=f"{row['lr']:.3g}")
                elif i % max(1, cfg.iterations // 20) == 0 or i == cfg.iterations:
                    say(f"it {i:>5}  pre {row['train_pre_return']:8.3f}  post {row['train_post_return']:8.3f}  "
                        f"beta {row['beta']:.4g}  lr {row['lr']:.4g}  {row['time_s']:.2f}s/it")
            if i % checkpoint_every == 0 or i == cfg.iterations or stopping:
                if comm is not None:
                    comm.check_replicated(learner)
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

    wall = time.perf_counter() - start
    summary = _summary(cfg, learner, history["eval"], wall) | {"status": status}
    if main:
        flush()
        _write_text(out / "metrics.json",
                    json.dumps({"config": cfg.to_dict(), "summary": summary, **history}, indent=1))
        if plot and history["train"]:
            _plot(out, history["train"], history["eval"], cfg)
    return TrainResult(cfg, history["train"], history["eval"], summary, out, learner, status, message)


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


def run(args: argparse.Namespace, comm: Communicator | None = None) -> int:
    """CLI entry point (also each rank's entry point under :mod:`metaopt.distributed`).

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
        if args.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be an int >= 1, got {args.checkpoint_every}")
        if args.nproc < 1:
            raise ValueError(f"--nproc must be an int >= 1, got {args.nproc}")
        if comm is None:
            if args.nproc > cfg.tasks:
                raise ValueError(f"--nproc must be <= --tasks ({cfg.tasks}) so that every process has a task, "
                                 f"got {args.nproc}")
            check_out_dir(args.out)
            if args.nproc > 1:
                from metaopt.distributed import launch

                return launch(args)
        elif args.nproc not in (1, comm.world_size):
            raise ValueError(f"--nproc must be left out (or equal the {comm.world_size} processes torchrun "
                             f"started), got {args.nproc}")
        result = train(cfg, args.out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                       progress=not args.no_progress and sys.stderr.isatty(), plot=not args.no_plot,
                       tensorboard=args.tensorboard, log=print if main else (lambda _text: None), comm=comm)
    except (ValueError, ImportError) as err:
        error(err)
        return 2
    if main:
        print(format_summary(result))
        print(f"artifacts in {result.out}/: metrics.csv, eval.csv, metrics.json, config.json, {CHECKPOINT}"
              + ("" if args.no_plot else ", returns.png, meta_params.png"))
    if result.status == "non-finite":
        error(result.error)
        return 3
    return 0
