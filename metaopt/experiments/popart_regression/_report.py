"""Fig. 1a outputs: the final-RMSE table, ``curves.csv``, ``summary.json`` and ``fig1a.png``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from metaopt.artifacts import atomic_write, write_csv, write_json
from metaopt.experiments.popart_regression._experiment import Results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["format_table", "write_outputs"]


def format_table(results: Results) -> str:
    """Plain-text table of the final smoothed RMSE per method (median and 10-90 percentiles over seeds)."""
    proto = results.protocol
    lines = [
        f"final RMSE at sample {results.steps - 1} (window {results.window}, {results.seeds} seeds, {results.dtype}, "
        f"protocol {results.protocol_name}: record {proto.record} ART, head init {proto.head_init}):",
        f"{'method':<8} {'lr':>9} {'beta':>9} {'median':>10} {'p10':>10} {'p90':>10} {'inliers':>9} {'time s':>8}",
    ]
    for m in results.specs:
        f = results.final(m)
        hyper = results.final_hyper(m)
        beta = "-" if "beta" not in hyper else f"{hyper['beta']['median']:.3g}"
        lines.append(
            f"{m:<8} {hyper['lr']['median']:>9.3g} {beta:>9} {f['median']:>10.2f} {f['p10']:>10.2f} {f['p90']:>10.2f} "
            f"{results.rmse_inliers(m)['median']:>9.2f} {results.wall_time_s.get(m, float('nan')):>8.1f}"
        )
    if results.online is not None:
        o = results.online
        lines.append(
            f"popart learns {','.join(o.learn)} online from lr={results.specs['popart'].lr:.3g}, "
            f"beta={results.specs['popart'].beta:.3g} (final values above: median over seeds); truncation "
            f"{o.truncation}, meta-lr {o.meta_lr:g}, scale {o.meta_scale}, huber {o.huber}, carry {o.carry}, "
            f"reattach {o.reattach}, mode {o.mode}"
        )
    lines.append("inliers: each seed's RMSE over all samples except the outliers, median over seeds")
    return "\n".join(lines)


def _summary(results: Results) -> dict[str, Any]:
    return {
        "seeds": results.seeds,
        "steps": results.steps,
        "seed": results.seed,
        "window": results.window,
        "dtype": results.dtype,
        "protocol": {"name": results.protocol_name, **results.protocol._asdict()},
        "outliers": results.outliers,
        "torch": torch.__version__,
        "online": None if results.online is None else results.online._asdict(),
        "methods": {
            m: {
                "initial_lr" if m in results.hyper else "spec_lr": spec.lr,
                "initial_beta" if m in results.hyper else "spec_beta": spec.beta,
                "pop": spec.pop,
                "final_rmse": results.final(m),
                "rmse_inliers": results.rmse_inliers(m)["median"],
                "rmse_inliers_p10_p90": [results.rmse_inliers(m)["p10"], results.rmse_inliers(m)["p90"]],
                **{f"final_{k}": v for k, v in results.final_hyper(m).items()},
                **{k: v["median"] for k, v in results.final_hyper(m).items()},  # lr, beta: final, median

                "learned": m in results.hyper,
                "wall_time_s": results.wall_time_s.get(m),
            }
            for m, spec in results.specs.items()
        },
        "wall_time_s": sum(results.wall_time_s.values()),
    }


def _plot(results: Results) -> Figure:
    """The median and 10-90% band of every method's curve (a figure without pyplot: no backend is chosen)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    learned = [m for m in results.methods if m in results.hyper]
    fig = Figure(figsize=(11, 4.5) if learned else (7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1) if learned else fig.add_subplot()
    steps = torch.arange(results.steps).numpy()
    colors = {"sgd": "tab:blue", "art": "tab:green", "popart": "tab:red"}
    for m, spec in results.specs.items():
        q = results.quantiles(m)
        label = f"{m} (lr={spec.lr:.2g}" + ("" if spec.beta is None else f", β={spec.beta:.2g}") + ")"
        if m in results.hyper:
            label = label.replace("(", "(learned online from ", 1)
        ax.plot(steps, q["median"].numpy(), color=colors.get(m), lw=1, label=label)
        ax.fill_between(steps, q["p10"].numpy(), q["p90"].numpy(), color=colors.get(m), alpha=0.25, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("# samples")
    ax.set_ylabel(f"RMSE (moving average, window {results.window})")
    ax.set_title(
        f"PopArt Fig. 1a (binary regression), protocol {results.protocol_name}: median, 10-90% of {results.seeds} "
        "seeds",
        fontsize=9,
    )
    ax.legend(loc="upper right", fontsize=8)
    if learned:
        hx = fig.add_subplot(1, 2, 2)
        probs = torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64)
        for m in learned:
            for key, color in (("beta", "tab:purple"), ("lr", "tab:orange")):
                hq = torch.quantile(results.hyper[m][key], probs, dim=0)
                hx.plot(steps, hq[0].numpy(), color=color, lw=1, label=f"{m}: learned {'β' if key == 'beta' else 'lr'}")
                hx.fill_between(steps, hq[1].numpy(), hq[2].numpy(), color=color, alpha=0.25, lw=0)
        for t in results.outliers:
            hx.axvline(t, color="0.8", lw=0.5)
        hx.set_yscale("log")
        hx.set_xlabel("# samples")
        hx.set_title("learned online: median, 10-90% over seeds", fontsize=9)
        hx.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def write_outputs(results: Results, out: str | os.PathLike, *, plot: bool = True) -> dict[str, Path]:
    """Write ``curves.csv``, ``summary.json`` and (with ``plot``) ``fig1a.png`` atomically into ``out``.

    The CSV has one row per ``(step, method)``: ``step`` is the 0-based sample index whose test error ends
    the window; ``median``, ``p10``, ``p90`` are over seeds.

    Args:
        results: From :func:`run_experiment`.
        out: Output folder (created if missing).
        plot: Whether to draw the PNG (needs matplotlib).

    Returns:
        Paths written, by kind (``"csv"``, ``"json"``, ``"png"``).
    """
    out = Path(out)
    paths = {"csv": out / "curves.csv", "json": out / "summary.json"}

    def rows() -> Iterator[dict[str, Any]]:
        for m in results.methods:
            q = {k: v.tolist() for k, v in results.quantiles(m).items()}
            for t in range(results.steps):
                yield {"step": t, "method": m, "median": f"{q['median'][t]:.6g}", "p10": f"{q['p10'][t]:.6g}",
                       "p90": f"{q['p90'][t]:.6g}"}

    write_csv(paths["csv"], rows())
    write_json(paths["json"], _summary(results))
    if plot:
        fig = _plot(results)
        paths["png"] = atomic_write(out / "fig1a.png", lambda f: fig.savefig(f, format="png", dpi=120))
    return paths
