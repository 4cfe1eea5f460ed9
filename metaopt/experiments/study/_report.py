"""Aggregate the study's runs: tables, the targets of the issue (met or not, with the numbers), plots."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from metaopt.artifacts import save_figure
from metaopt.experiments.study._runs import t_interval
from metaopt.maml.parts import gradient_signal

__all__ = ["aggregate", "targets", "markdown", "plot"]


def _fmt(m: float, h: float, digits: int = 3) -> str:
    return f"{m:+.{digits}f}" if math.isnan(h) else f"{m:+.{digits}f} ± {h:.{digits}f}"


def aggregate(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group runs by (part, method, value): means and 95% intervals over seeds, per scale and overall."""
    groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["part"], r["method"], r["value"])].append(r)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (part, method, value), runs in groups.items():
        ok = [r for r in runs if r["gain_by_scale"] is not None]
        row: dict[str, Any] = {"part": part, "method": method, "value": value, "seeds": len(runs), "ok": len(ok),
                               "failures": [r["status"] for r in runs if r["gain_by_scale"] is None],
                               "scales": runs[0]["scales"], "wall_s": sum(r["wall_s"] for r in runs)}
        if ok:
            row["mean_gain"] = t_interval([r["mean_gain"] for r in ok])
            row["worst_gain"] = t_interval([r["worst_gain"] for r in ok])
            row["by_scale"] = [t_interval([r["gain_by_scale"][i] for r in ok]) for i in range(len(row["scales"]))]
            if all("mean_limit_gain" in r for r in ok):
                row["limit_gain"] = t_interval([r["mean_limit_gain"] for r in ok])
            row["seed_gains"] = {str(r["seed"]): r["mean_gain"] for r in ok}
            row["lr"] = [r["final"]["lr"] for r in ok]
            row["config_lr"] = ok[0]["config"]["inner_lr"]
            row["beta"] = [r["final"]["beta"] for r in ok]
            if all("live_units" in r["final"] for r in ok):
                row["live_units"] = [r["final"]["live_units"] for r in ok]
                row["logit_spread"] = [r["final"]["logit_spread"] for r in ok]
            sig = [signal_summary(r["signal"]) for r in ok if r.get("signal", {}).get("grad_logit_beta")]
            if sig:
                row["signal"] = sig
        out[part].append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r["method"], -math.inf if r["value"] is None else r["value"]))
    return dict(out)


def signal_summary(signal: dict[str, list[float]], window: int = 50) -> dict[str, float]:
    """The meta-gradient's signal of one run with a learned beta: is its sign steady, or zero-mean noise?

    Over the first ``window`` iterations (``init``) and the ``window`` around the middle of training (``mid``): the
    t-statistic of ``d/dlogit beta`` across iterations, its fraction of positive values, and the ratio of its median
    magnitude to that of ``d/dlog lr`` (the common shift of every learned rate); plus how many iterations gave exactly
    0 for beta.
    """
    g = signal["grad_logit_beta"]
    lr = signal.get("grad_log_lr", [])
    n = len(g)
    mid = max(0, n // 2 - window // 2)
    out: dict[str, float] = {"zeros": gradient_signal(g, lr)["zeros"]}
    for name, sl in (("init", slice(0, window)), ("mid", slice(mid, mid + window))):
        sig = gradient_signal(g[sl], lr[sl])
        out |= {f"t_{name}": sig["t"], f"positive_{name}": sig["positive"], f"ratio_{name}": sig["ratio"]}
    return out


def _paired(rows: list[dict[str, Any]], tag: str, learned_method: str | None = None
            ) -> dict[float | None, tuple[float, float]]:
    """Each fixed beta's (and the learned beta's) gain minus the same seed's mean over the fixed-beta grid.

    The learned row (key ``None``) is ``learned-beta-<tag>``, or ``learned_method`` (e.g. a ``-from0.9`` start).

    Seeds share theta_0's initialization and the task stream across the grid, so the paired difference removes the
    seed-to-seed spread of meta-training that dominates the unpaired intervals.
    """
    grid = [r for r in rows if r["method"] == f"fixed-beta-{tag}" and r.get("seed_gains")]
    seeds = set.intersection(*(set(r["seed_gains"]) for r in grid)) if grid else set()
    learned = _one(rows, learned_method or f"learned-beta-{tag}")
    if learned and learned.get("seed_gains"):
        seeds &= set(learned["seed_gains"])
    if len(seeds) < 2:
        return {}
    base = {sd: statistics.fmean(r["seed_gains"][sd] for r in grid) for sd in seeds}
    out: dict[float | None, tuple[float, float]] = {}
    for r in sorted(grid, key=lambda r: r["value"]) + ([learned] if learned and learned.get("seed_gains") else []):
        out[r["value"]] = t_interval([r["seed_gains"][sd] - base[sd] for sd in sorted(seeds)])
    return out


def _best(rows: list[dict[str, Any]], method: str, key: str = "mean_gain") -> dict[str, Any] | None:
    """The best row of ``method`` (a prefix ending in ``*`` matches several methods, e.g. ``maml-K*``)."""
    cands = [r for r in rows if (r["method"].startswith(method[:-1]) if method.endswith("*") else
                                 r["method"] == method) and r.get(key)]
    return max(cands, key=lambda r: r[key][0], default=None)


def _one(rows: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["method"] == method and r.get("mean_gain")), None)


def targets(agg: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's targets, each with ``met`` (True/False) and the numbers behind the verdict."""
    out = []
    rows = agg.get("scale", [])
    pop, best_mean, best_worst = _one(rows, "popart-maml"), _best(rows, "maml-K*"), _best(rows, "maml-K*",
                                                                                           "worst_gain")
    if pop and best_mean and best_worst:
        (pm, ph), (bm, bh) = pop["mean_gain"], best_mean["mean_gain"]
        out.append({"target": "PopArt-MAML (learned lr, beta) >= best swept plain MAML on mean normalized gain",
                    "met": pm >= bm, "detail": f"PopArt-MAML {_fmt(pm, ph)} vs plain MAML ({best_mean['method']}) at "
                    f"lr {best_mean['value']:g} {_fmt(bm, bh)}"})
        (pw, pwh), (bw, bwh) = pop["worst_gain"], best_worst["worst_gain"]
        separated = pw - pwh > bw + bwh
        out.append({"target": "PopArt-MAML better on worst-c gain, non-overlapping 95% intervals",
                    "met": pw > bw and separated, "detail": f"PopArt-MAML {_fmt(pw, pwh)} vs best plain MAML "
                    f"({best_worst['method']}, lr {best_worst['value']:g}) {_fmt(bw, bwh)}"})
    rows = agg.get("interior", [])
    for method in sorted({r["method"] for r in rows if not r["method"].endswith("-learned-lr")}):
        best, learned = _best(rows, method), _one(rows, f"{method}-learned-lr")
        if not (best and learned):
            continue
        sweep = sorted((r["value"], r["mean_gain"]) for r in rows if r["method"] == method and r.get("mean_gain"))
        (bm, bh), (lm_end, _) = best["mean_gain"], sweep[-1][1]
        inside = sweep[0][0] < best["value"] < sweep[-1][0]
        significant = inside and bm - (0.0 if math.isnan(bh) else bh) > max(sweep[0][1][0], lm_end)
        geo = math.exp(statistics.fmean(math.log(x) for x in learned["lr"]))
        ratio = max(geo / best["value"], best["value"] / geo)
        out.append({"target": f"interior optimum ({method}): the lr sweep peaks inside the range, its 95% interval "
                    "above both ends' means", "met": significant,
                    "detail": "gain by lr: " + ", ".join(f"{lr:g}: {_fmt(m, h)}" for lr, (m, h) in sweep)})
        out.append({"target": f"learned lr within 2x of the sweep's best lr ({method})", "met": ratio <= 2.0,
                    "detail": f"learned lr {geo:.3g} (geometric mean over seeds, from {learned['config_lr']:g}) vs "
                    f"best swept {best['value']:g} (factor {ratio:.2f}); learned gain {_fmt(*learned['mean_gain'])}, "
                    f"best swept {_fmt(bm, bh)}"})
    rows = agg.get("beta", [])
    for tag in sorted({r["method"].removeprefix("fixed-beta-") for r in rows if r["method"].startswith("fixed-beta-")}):
        learned, best = _one(rows, f"learned-beta-{tag}"), _best(rows, f"fixed-beta-{tag}")
        sweep = sorted((r["value"], r["mean_gain"]) for r in rows if r["method"] == f"fixed-beta-{tag}"
                       and r.get("mean_gain"))
        if not (learned and best and sweep):
            continue
        fixed = [m for _, (m, _) in sweep]
        (lm, lh), (bm, bh) = learned["mean_gain"], best["mean_gain"]
        med = statistics.median(fixed)
        out.append({"target": f"{tag}: learned beta >= median of the fixed-beta grid and within the interval of the "
                    "best", "met": lm >= med and lm >= bm - (0.0 if math.isnan(bh) else bh),
                    "detail": f"learned beta (ends {statistics.fmean(learned['beta']):.3g}) {_fmt(lm, lh)}; grid "
                    f"median {med:+.3f}; best fixed beta {best['value']:g} {_fmt(bm, bh)}; spread of the grid's "
                    f"means {max(fixed) - min(fixed):.3f}"})
        inside = sweep[0][0] < best["value"] < sweep[-1][0]
        lower = bm - (0.0 if math.isnan(bh) else bh)
        paired = _paired(rows, tag)
        if paired:
            out.append({"target": f"{tag}: a fixed beta differs from the grid, paired by seed (the difference to the "
                        "same seed's grid mean; 95% interval excludes 0)",
                        "met": any(abs(m) > h for m, h in paired.values() if not math.isnan(h)),
                        "detail": ", ".join(f"{'learned' if b is None else format(b, 'g')}: {_fmt(m, h)}"
                                            for b, (m, h) in paired.items())})
        out.append({"target": f"{tag}: beta has an interior optimum (the best fixed beta inside the grid, its 95% "
                    "interval above both ends' means)", "met": inside and lower > max(sweep[0][1][0], sweep[-1][1][0]),
                    "detail": "gain by beta: " + ", ".join(f"{b:g}: {_fmt(m, h)}" for b, (m, h) in sweep)})
        if learned.get("signal"):
            sig = learned["signal"]
            t0, tm = [x["t_init"] for x in sig], [x["t_mid"] for x in sig]
            out.append({"target": f"{tag}: beta's meta-gradient has a steady sign (|t| >= 2 over the first 50 "
                        "iterations in every seed)", "met": all(abs(t) >= 2 for t in t0),
                        "detail": "t at init " + ", ".join(f"{t:+.1f}" for t in t0) + "; mid-training "
                        + ", ".join(f"{t:+.1f}" for t in tm) + "; median |d/dlogit beta| / median |d/dlog lr| at init "
                        + ", ".join(f"{x['ratio_init']:.2%}" for x in sig)
                        + f"; iterations with exactly 0: {sum(int(x['zeros']) for x in sig)}"})
    for r in rows:
        if r.get("live_units") and r["method"].startswith("learned-beta"):
            alive = [u >= 0.5 and s > 1e-4 for u, s in zip(r["live_units"], r["logit_spread"], strict=True)]
            out.append({"target": f"{r['method']}: the trained network stays alive (>= 50% live hidden units, the "
                        "policy depends on the state) in every seed", "met": all(alive),
                        "detail": "live units " + ", ".join(f"{u:.0%}" for u in r["live_units"]) + "; logit spread "
                        + ", ".join(f"{x:.3f}" for x in r["logit_spread"])})
    return out


def markdown(agg: dict[str, list[dict[str, Any]]], tgt: list[dict[str, Any]], wall_s: float, command: str) -> str:
    """The report: one table per part, then the targets."""
    lines = ["# metaopt study", "", f"Command: `{command}`", "",
             f"Total training + evaluation time of the runs: {wall_s / 60:.1f} min (one thread per run).", "",
             "Gains are scale-normalized exact adaptation gains (J(theta') - J(theta_0)) / c on fixed test tasks, "
             "mean over seeds ± 95% t-interval.", ""]
    for part, rows in agg.items():
        scales = max((r["scales"] for r in rows), key=len)
        limit = any("limit_gain" in r for r in rows)
        lines += [f"## {part}", "", "| method | value | seeds ok | mean gain | worst-c gain | "
                  + " | ".join(f"c={c:g}" for c in scales) + " | final lr | final beta |"
                  + (" N→∞ gain |" if limit else ""),
                  "|---|---|---|---|---|" + "---|" * len(scales) + "---|---|" + ("---|" if limit else "")]
        for r in rows:
            value = "" if r["value"] is None else f"{r['value']:g}"
            if not r.get("mean_gain"):
                lines.append(f"| {r['method']} | {value} | 0/{r['seeds']} | failed: {r['failures'][:1]} |")
                continue
            cells = dict(zip(r["scales"], r["by_scale"], strict=True))
            per = " | ".join(_fmt(*cells[c]) if c in cells else "" for c in scales)
            lr = statistics.fmean(r["lr"])
            beta = statistics.fmean(r["beta"])
            extra = f" {_fmt(*r['limit_gain'])} |" if "limit_gain" in r else (" |" if limit else "")
            lines.append(f"| {r['method']} | {value} | {r['ok']}/{r['seeds']} | {_fmt(*r['mean_gain'])} | "
                         f"{_fmt(*r['worst_gain'])} | {per} | {lr:.3g} | {beta:.3g} |{extra}")
        lines.append("")
    sig_rows = [r for r in agg.get("beta", []) if r.get("signal")]
    if sig_rows:
        lines += ["## beta's meta-gradient and the network's health (learned-beta runs)", "",
                  "t: t-statistic of d/dlogit beta over 50 iterations (init: the first 50; mid: around the middle), "
                  "one value per seed; ratio: median |d/dlogit beta| / median |d/dlog lr| over the first 50; zeros: "
                  "iterations where d/dlogit beta was exactly 0; live: fraction of live hidden units of theta_0 at the "
                  "end (smallest layer); spread: std over states of log pi, mean over actions.", "",
                  "| method | t init | t mid | ratio init | zeros | final beta | live | spread |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sig_rows:
            sig = r["signal"]
            live = " ".join(f"{u:.2f}" for u in r.get("live_units", []))
            spread = " ".join(f"{x:.3f}" for x in r.get("logit_spread", []))

            def col(key: str, fmt: str, sig: list[dict[str, float]] = sig) -> str:
                return " ".join(format(x[key], fmt) for x in sig)

            betas = " ".join(f"{b:.3g}" for b in r["beta"])
            lines.append(f"| {r['method']} | {col('t_init', '+.1f')} | {col('t_mid', '+.1f')} | "
                         f"{col('ratio_init', '.2%')} | {sum(int(x['zeros']) for x in sig)} | {betas} | {live} | "
                         f"{spread} |")
        lines.append("")
    if tgt:
        lines += ["## Targets", ""] + [f"- **{'met' if t['met'] else 'not met'}** -- {t['target']}: {t['detail']}"
                                        for t in tgt] + [""]
    return "\n".join(lines)


def plot(agg: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    """``study_scale.png`` (gain vs c; plain MAML's lr sweep), ``study_interior.png``, ``study_beta.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if "scale" in agg:
        rows = agg["scale"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
        best = _best(rows, "maml-K*")
        for r in rows:
            if not r.get("by_scale"):
                continue
            label = r["method"] + ("" if r["value"] is None else f" lr={r['value']:g}")
            swept = r["method"].startswith("maml-K")
            style = {"lw": 2.5} if not swept or r is best else {"lw": 0.8, "alpha": 0.4}
            m = [x for x, _ in r["by_scale"]]
            h = [0.0 if math.isnan(y) else y for _, y in r["by_scale"]]
            a1.errorbar(r["scales"], m, yerr=h, label=label if not swept or r is best else None, capsize=3, **style)
        a1.set_xscale("log")
        a1.set_xlabel("reward scale c")
        a1.set_ylabel("gain / c (exact)")
        a1.set_title("adaptation gain per scale (thin: other swept lrs)")
        a1.legend(fontsize=8)
        for key, color in (("mean_gain", "tab:blue"), ("worst_gain", "tab:red")):
            for method, marker in sorted({(r["method"], "o" if r["method"].endswith("1") else "s") for r in rows
                                          if r["method"].startswith("maml-K")}):
                sweep = [r for r in rows if r["method"] == method and r.get("mean_gain")]
                a2.errorbar([r["value"] for r in sweep], [r[key][0] for r in sweep], marker=marker,
                            yerr=[0 if math.isnan(r[key][1]) else r[key][1] for r in sweep], color=color, capsize=3,
                            label=f"plain {method}, {key.replace('_', ' ')}")
            for method, ls in (("popart-maml", "--"), ("maml-learned-lr", ":")):
                one = _one(rows, method)
                if one:
                    a2.axhline(one[key][0], color=color, ls=ls, label=f"{method}, {key.replace('_', ' ')}")
        a2.set_xscale("log")
        a2.set_xlabel("plain MAML's fixed inner lr")
        a2.set_ylabel("gain / c")
        a2.set_title("the tuned baseline")
        a2.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, out / "study_scale.png"))
    panels = (("interior", "maml", "maml-learned-lr", "fixed inner lr (SGD)"),
              ("interior-adam", "maml-adam", "maml-adam-learned-lr", "fixed inner lr (Adam)"))
    beta_rows = agg.get("beta", [])
    tags = sorted({r["method"].removeprefix("fixed-beta-") for r in beta_rows if r["method"].startswith("fixed-beta-")})
    if tags:
        fig, axes = plt.subplots(1, len(tags), figsize=(4.2 * len(tags), 3.8), squeeze=False)
        for ax, tag in zip(axes[0], tags, strict=True):
            paired = _paired(beta_rows, tag)
            fixed = [(b, mh) for b, mh in paired.items() if b is not None]
            if not fixed:
                continue
            ax.errorbar([b for b, _ in fixed], [m for _, (m, _) in fixed], capsize=3, marker="o",
                        yerr=[0 if math.isnan(h) else h for _, (_, h) in fixed], label="fixed beta")
            learned_row = _one(beta_rows, f"learned-beta-{tag}")
            if None in paired and learned_row:
                lm, lh = paired[None]
                ax.errorbar([statistics.fmean(learned_row["beta"])], [lm], yerr=[0 if math.isnan(lh) else lh],
                            marker="*", ms=14, color="tab:red", capsize=3, label="learned (x = final beta)")
            starts = sorted(r["method"] for r in beta_rows if r["method"].startswith(f"learned-beta-{tag}-from"))
            for method, color in zip(starts, ("tab:purple", "tab:green", "tab:brown"), strict=False):
                row, other = _one(beta_rows, method), _paired(beta_rows, tag, method).get(None)
                if row and other:
                    ax.errorbar([statistics.fmean(row["beta"])], [other[0]], capsize=3, marker="*", ms=14,
                                yerr=[0 if math.isnan(other[1]) else other[1]], color=color,
                                label=f"learned {method.removeprefix(f'learned-beta-{tag}-')}")
            ax.axhline(0.0, color="gray", lw=0.8)
            ax.set_xscale("logit")  # beta in (0, 1): both ends resolved (0.003 ... 0.999)
            ax.set_xticks([b for b, _ in fixed], [f"{b:g}" for b, _ in fixed], fontsize=7, rotation=45)
            ax.minorticks_off()
            ax.set_xlabel("beta")
            ax.set_title(tag)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("gain/c minus the seed's grid mean")
        axes[0][0].legend(fontsize=8)
        fig.suptitle("PopArt-MAML: beta's effect on the exact adaptation gain, paired by seed (95% intervals)")
        fig.tight_layout()
        paths.append(save_figure(fig, out / "study_beta.png"))
    for part, method, learned, xlabel in panels:
        rows = agg.get(part.split("-")[0], [])
        sweep = [r for r in rows if r["method"] == method and r.get("mean_gain")]
        if not sweep:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar([r["value"] for r in sweep], [r["mean_gain"][0] for r in sweep],
                    yerr=[0 if math.isnan(r["mean_gain"][1]) else r["mean_gain"][1] for r in sweep], capsize=3,
                    marker="o", label=f"{method} (fixed)")
        one = _one(rows, learned)
        if one:
            x = statistics.fmean(one["lr" if part.startswith("interior") else "beta"])
            ax.errorbar([x], [one["mean_gain"][0]], yerr=[0 if math.isnan(one["mean_gain"][1]) else
                                                          one["mean_gain"][1]], marker="*", ms=14, color="tab:red",
                        capsize=3, label=f"{learned} (learned; x = final value)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean gain / c (exact)")
        ax.set_title(f"{part} part")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save_figure(fig, out / f"study_{part}.png"))
    return paths
