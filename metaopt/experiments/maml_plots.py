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
    ax.set_title(f"MAML-A2C on TabularMDP ({'PopArt' if cfg.popart else 'no PopArt'}, engine={cfg.engine}, "
                 f"K={cfg.inner_steps})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [save_figure(fig, out / "returns.png")]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("beta", "lr"), strict=True):
        ax.plot(it, [r[key] for r in train_rows])
        ax.set_xlabel("meta-iteration")
        ax.set_yscale("log")
        ax.set_title(f"{key} ({'learned' if key in cfg.learn else 'fixed'})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "meta_params.png"))
    return paths
