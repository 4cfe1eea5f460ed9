"""Plots of a ``metaopt maml-rl`` run: returns over meta-iterations and the learned inner hyperparameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaopt.artifacts import save_figure
from metaopt.maml import MAMLConfig

__all__ = ["plot_run"]


def _smooth(x: list[float], w: int = 10) -> Any:
    import numpy as np

    a = np.asarray(x, dtype=float)
    if len(a) < w:
        return a
    c = np.cumsum(np.insert(a, 0, 0.0))
    return np.concatenate([c[1:w] / np.arange(1, w), (c[w:] - c[:-w]) / w])


def plot_run(out: Path, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], cfg: MAMLConfig
             ) -> list[Path]:
    """Write ``returns.png`` and ``meta_params.png`` into ``out`` (atomically); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in train_rows]
    suffix, label = ("_norm", "return / c") if cfg.scaled else ("", "return")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, name, color in ((f"train_pre_return{suffix}", "train pre", "tab:blue"),
                             (f"train_post_return{suffix}", "train post", "tab:orange")):
        ax.plot(it, _smooth([r[key] for r in train_rows]), color=color, alpha=0.8, label=f"{name} (10-it. mean)")
    if eval_rows:
        ei = [r["iteration"] for r in eval_rows]
        ax.plot(ei, [r[f"test_pre_return{suffix}"] for r in eval_rows], "o--", color="tab:blue", label="test pre")
        ax.plot(ei, [r[f"test_post_return{suffix}"] for r in eval_rows], "o--", color="tab:orange", label="test post")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(label)
    ax.set_title(f"MAML-A2C on {cfg.env} ({'PopArt' if cfg.popart else 'no PopArt'}, engine={cfg.engine}, "
                 f"K={cfg.inner_steps})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [save_figure(fig, out / "returns.png")]

    health = all("live_units" in r for r in train_rows)
    fig, axes = plt.subplots(1, 3 if health else 2, figsize=(13.5 if health else 9, 3.5))
    for ax, key in zip(axes, ("beta", "lr"), strict=False):
        ax.plot(it, [r[key] for r in train_rows])
        ax.set_xlabel("meta-iteration")
        ax.set_yscale("logit" if key == "beta" else "log")  # beta in (0, 1): 0.9 vs 0.99 resolved
        mean = " (mean over parameters)" if key == "lr" and cfg.lr_per_parameter else ""
        ax.set_title(f"{key} ({'learned' if key in cfg.learn else 'fixed'}){mean}")
        ax.grid(alpha=0.3)
    if health:  # is theta_0's policy still a function of the state?
        ax = axes[2]
        ax.plot(it, [r["live_units"] for r in train_rows], color="tab:green", label="live hidden units (fraction)")
        ax.plot(it, [r["logit_spread"] for r in train_rows], color="tab:purple", label="spread of log pi over states")
        ax.set_xlabel("meta-iteration")
        ax.set_ylim(bottom=0)
        ax.set_title("theta_0's health (0: the policy ignores the state)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "meta_params.png"))
    return paths
