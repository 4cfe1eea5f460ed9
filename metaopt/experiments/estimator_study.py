r"""``metaopt estimator-study``: bias and variance of sampled MAML meta-gradients (surrogate, LVC, DiCE).

For a fixed initial policy (the job's ActorCritic, seed ``--seed``) and ``--num-tasks`` fixed TabularMDP
tasks, each estimator's inner step :math:`\theta' = \theta_0 - \alpha \nabla \hat L` is taken on ``N``
sampled trajectories per task through :func:`metaopt.engines.adapt`, the *exact* outer return
:math:`J(\theta')` is differentiated (:mod:`metaopt.exact`), and the meta-gradient is compared with the exact
:math:`\nabla_{\theta_0} \sum_n J_n(\theta_0 + \alpha\kappa\nabla J_n(\theta_0))` over ``--repeats`` repeats
for each ``N`` in ``--sizes`` (see :mod:`metaopt.verify.estimators` for the statistics).

Writes into ``--out``: ``study.json`` (settings, exact references, one row per baseline, estimator and
``N``), ``study.md`` (the table), ``estimator_bias.png`` (relative bias with its interval vs ``N`` and the
relative variance vs ``N``, one line per estimator, one row of panels per baseline) and, with
``--save-samples``, ``samples.pt`` (the raw meta-gradients). ``--quick`` is a tiny
budget for CI (well under 30 s).

Exit codes: 0 done, 2 bad input (argparse error naming the flag).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["QUICK", "add_arguments", "run", "format_markdown", "write_outputs"]

ESTIMATOR_NAMES = ("surrogate", "lvc", "dice")
BASELINE_NAMES = ("value", "exact", "none")
ENGINE_NAMES = ("func", "higher", "torchopt")
#: The ``--quick`` budget (overrides the corresponding flags).
QUICK: dict[str, Any] = {"sizes": [10, 100], "repeats": 4, "bootstrap": 100, "num_tasks": 2, "baselines": ["value"]}


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def checked(text: str) -> Any:
        try:
            return parse(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return checked


def _int_list(name: str, minimum: int) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"{name} must be a comma-separated list of integers >= {minimum}, got {text!r}") from None
        if not values or min(values) < minimum:
            raise ValueError(f"{name} must be a comma-separated list of integers >= {minimum}, got {text!r}")
        return values

    return _arg_type(parse)


def _name_list(name: str, allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in values if v not in allowed]
        if not values or bad:
            raise ValueError(f"{name} must be a comma-separated list out of {', '.join(allowed)}, got {text!r}")
        return list(dict.fromkeys(values))

    return _arg_type(parse)


def _number(name: str, low: float, *, low_open: bool, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value <= high)
        if not ok:
            bound = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
            raise ValueError(f"{name} must be a finite number {bound}, got {text!r}")
        return value

    return _arg_type(parse)


def _int_at_least(name: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
        return value

    return _arg_type(parse)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``estimator-study`` options to ``parser``."""
    parser.add_argument("--estimators", type=_name_list("estimators", ESTIMATOR_NAMES),
                        default=list(ESTIMATOR_NAMES), help="comma-separated estimators")
    parser.add_argument("--sizes", type=_int_list("sizes", 1), default=[10, 100, 1000, 10000],
                        help="comma-separated numbers N of inner trajectories per task")
    parser.add_argument("--repeats", type=_int_at_least("repeats", 2), default=100, help="repeats R per N")
    parser.add_argument("--baselines", type=_name_list("baselines", BASELINE_NAMES), default=["value", "exact"],
                        help="comma-separated baselines b_t(s): value (the network's value head, as the job), "
                             "exact (V_t(s) of the initial policy), none")
    parser.add_argument("--policy", choices=("network", "tabular"), default="network",
                        help="initial policy: the job's ActorCritic or a logit table")
    parser.add_argument("--num-tasks", type=_int_at_least("num-tasks", 1), default=4, help="fixed tasks")
    parser.add_argument("--horizon", type=_int_at_least("horizon", 1), default=10, help="episode length T")
    parser.add_argument("--lr", type=_number("lr", 0.0, low_open=True), default=1.0,
                        help="inner SGD rate alpha (the job uses 0.1; the step follows alpha*kappa*grad J, "
                             "kappa = 1/T)")
    parser.add_argument("--gamma", type=_number("gamma", 0.0, low_open=False, high=1.0), default=1.0,
                        help="discount of the estimators and of J (1 = the job's reported return)")
    parser.add_argument("--engine", choices=ENGINE_NAMES, default="func", help="meta-gradient engine")
    parser.add_argument("--bootstrap", type=_int_at_least("bootstrap", 10), default=1000, help="bootstrap resamples")
    parser.add_argument("--confidence", type=_number("confidence", 0.0, low_open=True, high=0.999), default=0.95,
                        help="interval level")
    parser.add_argument("--seed", type=_int_at_least("seed", 0), default=0, help="seed of the policy, tasks, rollouts")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny CI budget: overrides {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    parser.add_argument("--out", type=Path, default=Path("runs/estimator_study"), help="output folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    parser.add_argument("--save-samples", action="store_true",
                        help="also write samples.pt: the raw [R, P] meta-gradients and the exact references")


# ------------------------------------------------------------------------------------------------ outputs
def _fmt_ci(value: float, ci: Sequence[float], digits: int = 4) -> str:
    return f"{value:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def format_markdown(results: dict[str, Any]) -> str:
    """A markdown report: settings, then one table row per baseline, estimator and ``N``."""
    first = next(iter(results["studies"].values()))["settings"]
    lines = [
        "# Estimator study: sampled vs exact MAML meta-gradients",
        "",
        f"policy {first['policy']} ({first['num_parameters']} parameters), {first['num_tasks']} tasks, "
        f"S={first['num_states']}, A={first['num_actions']}, T={first['horizon']}, inner lr {first['lr']} "
        f"(kappa={first['kappa']:.3g}), gamma={first['gamma']}, lambda={first['lam']}, engine {first['engine']}, "
        f"R={first['repeats']} repeats, {first['confidence']:.0%} bootstrap intervals ({first['bootstrap']} "
        f"resamples), seed {first['seed']}; wall time {results['wall_time_s']:.1f} s.",
        "",
        "rel. bias = sign(b2)·sqrt|b2| / |g*|, b2 = |mean − g*|² − tr(Cov)/R (unbiased for the squared bias: its "
        "interval covers 0 for an unbiased estimator); lin. bias = the same for the outer objective linearized at "
        "the expected step (no Jensen gap: the estimator's own bias); limit = exact N→∞ bias of the estimator; "
        "rel. var = tr(Cov)/|g*|² of one estimate; noise = sqrt(tr(Cov)/R)/|g*| (the floor of rel. error).",
        "",
        "| baseline | estimator | N | rel. bias [CI] | lin. bias [CI] | limit | cosine [CI] | rel. error [CI] "
        "| noise | rel. var | ms/repeat |",
        "|---|---|---:|---|---|---:|---|---|---:|---:|---:|",
    ]
    for baseline, study in results["studies"].items():
        for row in study["rows"]:
            lim = study["exact"]["limit_rel_bias"][row["estimator"]]
            lines.append(
                f"| {baseline} | {row['estimator']} | {row['N']} | {_fmt_ci(row['rel_bias'], row['rel_bias_ci'])} "
                f"| {_fmt_ci(row['linearized']['rel_bias'], row['linearized']['rel_bias_ci'])} | {lim:.4f} "
                f"| {_fmt_ci(row['cosine'], row['cosine_ci'])} "
                f"| {_fmt_ci(row['rel_error'], row['rel_error_ci'])} | {row['noise_floor']:.4f} "
                f"| {row['rel_variance']:.3g} | {row['seconds_per_repeat'] * 1e3:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, write: Callable[[io.IOBase], None], *, binary: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plot(results: dict[str, Any], f: io.IOBase) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    studies = results["studies"]
    fig = Figure(figsize=(11, 3.8 * len(studies)))
    FigureCanvasAgg(fig)
    colors = {"surrogate": "tab:red", "lvc": "tab:blue", "dice": "tab:green"}
    for i, (baseline, study) in enumerate(studies.items()):
        ax_b = fig.add_subplot(len(studies), 2, 2 * i + 1)
        ax_v = fig.add_subplot(len(studies), 2, 2 * i + 2)
        for e in study["settings"]["estimators"]:
            rows = [r for r in study["rows"] if r["estimator"] == e]
            n = [r["N"] for r in rows]
            bias = [r["rel_bias"] for r in rows]
            lo = [r["rel_bias"] - r["rel_bias_ci"][0] for r in rows]
            hi = [r["rel_bias_ci"][1] - r["rel_bias"] for r in rows]
            c = colors.get(e)
            ax_b.errorbar(n, bias, yerr=[lo, hi], color=c, marker="o", capsize=3, label=e)
            lin = [r["linearized"] for r in rows]
            ax_b.errorbar([x * 1.08 for x in n], [r["rel_bias"] for r in lin],
                          yerr=[[r["rel_bias"] - r["rel_bias_ci"][0] for r in lin],
                                [r["rel_bias_ci"][1] - r["rel_bias"] for r in lin]],
                          color=c, marker="s", mfc="white", ls=":", capsize=2, label=f"{e} (linearized outer)")
            ax_b.axhline(study["exact"]["limit_rel_bias"][e], color=c, ls="--", lw=0.8)
            ax_v.loglog(n, [r["rel_variance"] for r in rows], color=c, marker="o", label=e)
        ax_b.axhline(0.0, color="k", lw=0.6)
        ax_b.set_xscale("log")
        ax_b.set_yscale("symlog", linthresh=0.01)
        ax_b.set_xlabel("N (inner trajectories per task)")
        ax_b.set_ylabel("relative bias of the meta-gradient")
        ax_b.set_title(f"baseline = {baseline}: bias, {study['settings']['confidence']:.0%} CI (dashed: N→∞ exact; "
                       "dotted: linearized outer)", fontsize=9)
        ax_b.legend(fontsize=7, ncol=2)
        ax_v.set_xlabel("N (inner trajectories per task)")
        ax_v.set_ylabel("tr(Cov) / |g*|² (one estimate)")
        ax_v.set_title(f"baseline = {baseline}: variance", fontsize=9)
        ax_v.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=110)


def write_outputs(results: dict[str, Any], out: str | os.PathLike, *, plot: bool = True) -> dict[str, Path]:
    """Write ``study.json``, ``study.md`` and (with ``plot``) ``estimator_bias.png`` atomically into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "study.json", "md": out / "study.md"}
    _atomic_write(paths["json"], lambda f: json.dump(results, f, indent=2, allow_nan=False))
    _atomic_write(paths["md"], lambda f: f.write(format_markdown(results)))
    if plot:
        paths["png"] = out / "estimator_bias.png"
        _atomic_write(paths["png"], lambda f: _plot(results, f), binary=True)
    return paths


# ------------------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> int:
    """Run the study from parsed arguments, write the outputs and print the table."""
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:  # pragma: no cover - matplotlib is a dev dependency
            raise SystemExit(f"estimator-study: the plot needs matplotlib ({e}); install it or pass --no-plot") from e
    import torch

    from metaopt.verify.estimators import make_problem, run_estimator_study

    settings = {"sizes": args.sizes, "repeats": args.repeats, "bootstrap": args.bootstrap,
                "num_tasks": args.num_tasks, "baselines": args.baselines}
    if args.quick:
        settings.update(QUICK)
    horizon, seed = args.horizon, args.seed
    start = time.perf_counter()
    studies, raw = {}, {}
    with torch.random.fork_rng(devices=[]):
        for baseline in settings["baselines"]:
            print(f"baseline = {baseline}")
            problem = make_problem(policy=args.policy, num_tasks=settings["num_tasks"], horizon=horizon, lr=args.lr,
                                   gamma=args.gamma, baseline=baseline, seed=seed)
            study = run_estimator_study(problem, estimators=args.estimators, sizes=settings["sizes"],
                                        repeats=settings["repeats"], engine=args.engine,
                                        bootstrap=settings["bootstrap"], confidence=args.confidence, seed=seed,
                                        log=print, samples_out=raw.setdefault(baseline, {}))
            study["settings"]["estimators"] = list(args.estimators)
            studies[baseline] = study
    results = {"studies": studies, "wall_time_s": time.perf_counter() - start}
    paths = write_outputs(results, args.out, plot=not args.no_plot)
    if args.save_samples:
        paths["samples"] = Path(args.out) / "samples.pt"
        torch.save(raw, paths["samples"])
    print(format_markdown(results))
    print(f"total time {results['wall_time_s']:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return 0
