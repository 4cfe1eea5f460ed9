"""The study's report: the markdown table and the plot, and writing every output file atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from metaopt.artifacts import atomic_write, remove_stale_temporaries, write_json, write_text

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["OUTPUTS", "format_markdown", "write_outputs"]

#: Output kind -> file name in ``--out``.
OUTPUTS = {"json": "study.json", "md": "study.md", "png": "estimator_bias.png", "samples": "samples.pt"}


# ------------------------------------------------------------------------------------------------ markdown
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


# ------------------------------------------------------------------------------------------------ plot
def _plot(results: dict[str, Any], f: IO[bytes]) -> None:
    """Draw the bias and variance panels (one row per baseline) into ``f`` as PNG."""
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


def write_outputs(
    results: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    plot: bool = True,
    samples: dict[str, dict[str, Tensor]] | None = None,
) -> dict[str, Path]:
    """Write the outputs into ``out``, each atomically (:mod:`metaopt.artifacts`).

    Args:
        results: The study (``{"studies": {baseline: run_estimator_study(...)}, ...}``).
        out: Output folder (created if missing).
        plot: Also draw ``estimator_bias.png`` (needs matplotlib).
        samples: Optional raw samples per baseline (``samples_out`` of :func:`run_estimator_study`), saved as
            ``samples.pt`` with ``torch.save``.

    Returns:
        Output kind (``"json"``, ``"md"``, ``"png"``, ``"samples"``) -> path written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, OUTPUTS.values())
    paths = {"json": out / OUTPUTS["json"], "md": out / OUTPUTS["md"]}
    write_json(paths["json"], results, allow_nan=False)
    write_text(paths["md"], format_markdown(results))
    if plot:
        paths["png"] = atomic_write(out / OUTPUTS["png"], lambda f: _plot(results, f))
    if samples is not None:
        import torch

        paths["samples"] = atomic_write(out / OUTPUTS["samples"], lambda f: torch.save(samples, f))
    return paths
