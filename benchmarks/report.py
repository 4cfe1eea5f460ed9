"""The results of a run: stamp (commit, machine, device, versions), targets, and the markdown/JSON files."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.settings import UNROLL_MODES
from metaopt.artifacts import write_json, write_text

__all__ = ["stamp", "loadavg", "time_of", "evaluate_targets", "render_markdown", "write_results"]

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------- stamp
def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages, or None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def stamp(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Commit, machine, device, torch threads and library versions of this run.

    Args:
        threads: The torch thread count (default: ``torch.get_num_threads()``).
        device: The device the job ran on (``cpu``, or a CUDA device whose name is recorded).
    """
    try:
        commit = _git("rev-parse", "HEAD") or "unknown"
        dirty: bool | None = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_model()
    return {
        "commit": commit, "dirty": dirty,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {"type": dev.type, "name": name},
        "machine": {"platform": platform.platform(), "processor": _cpu_model(),
                    "cpu_count": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
                    "loadavg_start": loadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "higher": _version("higher"), "torchopt": _version("torchopt"),
                     "gymnasium": _version("gymnasium"), "metaopt": _version("metaopt")},
    }


def time_of(row: dict[str, Any], metric: str) -> float:
    """The median time of ``row`` in ``metric`` (``cpu`` or ``wall``)."""
    return row["cpu_median_s"] if metric == "cpu" else row["median_s"]


# --------------------------------------------------------------------------------------------------- targets
def _linear_r2(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 3:
        return 1.0
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    a, b = np.polyfit(x, y, 1)
    ss_res, ss_tot = float(((y - (a * x + b)) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met (reported, never asserted).

    Rows with ``extra=True`` are not targets of the issue but the same checks against other references (TorchOpt's
    rollout, its example as written, truncated unrolls). Sections that were not run give no rows.
    """
    metric = res.get("settings", {}).get("metric", "cpu")
    alt = "wall" if metric == "cpu" else "cpu"
    out = []
    comp = {r["method"]: r for r in res["comparison"]["rows"]}

    def speedup(name: str, ref: str) -> tuple[float, str]:
        sp = time_of(comp[ref], metric) / time_of(comp[name], metric)
        alt_sp = time_of(comp[ref], alt) / time_of(comp[name], alt)
        return sp, f"{sp:.1f}x ({alt}: {alt_sp:.1f}x)"

    sp, text = speedup("metaopt-func", "baseline")
    out.append({"target": "metaopt-func >= 15x faster than the vector-env baseline per meta-iteration",
                "measured": text, "met": sp >= 15.0, "extra": False})
    if "torchopt-as-written" in comp:
        sp, text = speedup("metaopt-func", "torchopt-as-written")
        out.append({"target": "metaopt-func >= 100x faster than TorchOpt's example as written", "measured": text,
                    "met": sp >= 100.0, "extra": False})
    for e in ("metaopt-higher", "metaopt-torchopt"):
        r = comp[e]["time_ratio_to_baseline"]
        out.append({"target": f"{e} <= 1.2x the baseline's time", "measured": f"{r:.2f}x", "met": r <= 1.2,
                    "extra": False})
    func = sorted((r["tasks"], time_of(r, metric)) for r in res.get("scale", []) if r["method"] == "metaopt-func")
    if len(func) >= 2:
        (n0, t0), (n1, t1) = func[0], func[-1]
        expo = math.log(t1 / t0) / math.log(n1 / n0) if n1 > n0 else float("nan")
        text = f"time x{t1 / t0:.1f} for tasks x{n1 / n0:.0f} (exponent {expo:.2f}"
        if len(func) >= 3:
            (na, ta), (nb, tb) = func[-2], func[-1]
            text += f"; {na} -> {nb}: exponent {math.log(tb / ta) / math.log(nb / na):.2f}"
        out.append({"target": f"metaopt-func time sub-linear in tasks ({n0} -> {n1})", "measured": text + ")",
                    "met": expo < 1.0, "extra": False})
    for variant in ("PopArt, learn lr+beta", "PopArt"):
        pop = next((r for r in res["popart"] if r["variant"] == variant), None)
        if pop is not None:
            out.append({"target": f"{variant}: overhead <= 10%", "measured": f"{100 * pop['overhead']:+.1f}%",
                        "met": pop["overhead"] <= 0.10, "extra": variant == "PopArt"})
    rows = res["unroll"]["rows"]
    if rows and "peak_delta_mb" in rows[0]:
        by = {m: sorted((r["inner_steps"], r["peak_delta_mb"]) for r in rows if r["mode"] == m) for m in UNROLL_MODES}
        full = by["full"]
        r2 = _linear_r2([k for k, _ in full], [m for _, m in full])
        dk = full[-1][0] - full[0][0]
        growth = {m: by[m][-1][1] - by[m][0][1] for m in UNROLL_MODES}
        slope = growth["full"] / dk if dk > 0 else float("nan")
        out.append({"target": "memory linear in K for full unrolls", "measured": f"R^2 {r2:.3f}, {slope:.2f} MB per "
                    "inner step", "met": r2 >= 0.95 and growth["full"] > 0, "extra": False})
        for mode, label, extra in (("first_order", "first-order", False), ("truncate1", "truncate=1", True)):
            g = growth[mode]
            out.append({"target": f"memory flat in K for {label}",
                        "measured": f"{g:+.1f} MB from K={full[0][0]} to K={full[-1][0]} ({g / dk if dk else 0:.2f} "
                                    f"MB per step; full: {slope:.2f})",
                        "met": g <= max(5.0, 0.1 * growth["full"]), "extra": extra})
    if "torchopt-sequential-crn" in comp:
        sp, text = speedup("metaopt-func", "torchopt-sequential-crn")
        out.append({"target": "metaopt-func >= 100x faster than torchopt-sequential-crn", "measured": text,
                    "met": sp >= 100.0, "extra": True})
    return out


# -------------------------------------------------------------------------------------------------- markdown
def _ms(x: float) -> str:
    return f"{1000 * x:.1f}" if x < 10 else f"{1000 * x:.0f}"


def _mb(r: dict[str, Any]) -> str:
    return f"{r['peak_delta_mb']:.1f}" if "peak_delta_mb" in r else "-"


def _rate(r: dict[str, Any]) -> str:
    return f"{r['env_steps_per_s'] / 1e3:.0f}k | {r['gflops']:.2f} | {100 * r['peak_fraction']:.1f}%"


def render_markdown(res: dict[str, Any]) -> str:
    """The results as a markdown report."""
    st, s = res["stamp"], res["settings"]
    m, v, dev = st["machine"], st["versions"], st.get("device", {"type": "cpu", "name": "?"})
    metric = s.get("metric", "cpu")
    alt = "wall" if metric == "cpu" else "cpu"
    p = "cpu_" if metric == "cpu" else ""
    lines = [
        f"# metaopt benchmark: {s['name']}",
        "",
        f"- commit `{st['commit']}`{' (with uncommitted changes)' if st.get('dirty') else ''}, {st['date']}",
        f"- device: {dev['type']} ({dev['name']}); torch threads {m['torch_threads']}",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, load average {m.get('loadavg_start')} -> "
        f"{st.get('loadavg_end')}",
        f"- versions: python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, higher {v['higher']}, "
        f"torchopt {v['torchopt']}, gymnasium {v['gymnasium']}",
        f"- config: {s['tasks']} tasks x {s['trajectories']} trajectories x {s['horizon']} steps, 1 inner SGD step "
        f"(lr 0.1), outer Adam (lr 1e-3), no PopArt unless stated, {s['dtype']}; time of one full meta-iteration "
        f"(rollouts, adaptation, outer loss, backward, outer Adam step): median of the timed repetitions after "
        f"{s['warmup']} warm-up iteration(s)",
        "- rows: `baseline` = TorchOpt's loop (`torchopt.MetaSGD`, extract/recover_state_dict per task) with 20 "
        "Gymnasium envs stepped per time step and one batched policy forward, on metaopt's common random numbers; "
        "`torchopt-sequential-crn` = the same with TorchOpt `maml.py`'s rollout (one env, the episodes in sequence, "
        "one forward per env step); `torchopt-as-written` = `maml.py` as users run it (`gymnasium.make`, "
        "`Categorical.sample()`, the env's own RNG); `metaopt-*` = metaopt's engines",
        f"- ratios and targets use **{metric}** time ({'process CPU time' if metric == 'cpu' else 'wall-clock'}); "
        f"{alt} time is shown alongside",
        "- throughput: env steps (2 rollouts x tasks x trajectories x steps) per second; GFLOP/s: the job's matrix "
        "FLOPs (`benchmarks/flops.py`) per second; % of peak: against the 1024-cube matmul below",
        f"- memory: peak RSS minus RSS before, in a {s.get('isolation_used', s['isolation'])}ed child process per row",
        f"- wall time of the run: {res.get('wall_time_s', float('nan')):.0f} s",
        "",
    ]
    if "machine_rates" in res:
        lines += ["## Machine: achievable matmul rate (`torch.mm`, best of 3 rounds)", "",
                  "| shape (m x k x n) | dtype | time per product [us] | GFLOP/s |", "|---|---|---:|---:|"]
        for key, r in res["machine_rates"].items():
            lines.append(f"| {' x '.join(map(str, r['shape']))} ({key}) | {r['dtype']} | {1e6 * r['seconds']:.1f} | "
                         f"{r['gflops']:.1f} |")
        lines.append("")
    lines += [
        "## Identical math: baseline vs metaopt-func on the same iteration",
        "",
        "| baseline rollout | dtype | tasks | meta-grad rel. error | max per-tensor rel. error | "
        "max abs diff pre / post return | max abs diff outer loss | same trajectories |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in res["identical_math"]:
        lines.append(f"| {c['rollout']} | {c['dtype']} | {c['tasks']} | {c['grad_rel_error']:.2e} | "
                     f"{c['grad_max_rel_error_per_tensor']:.2e} | {c['max_abs_diff_pre_return']:.1e} / "
                     f"{c['max_abs_diff_post_return']:.1e} | {c['max_abs_diff_outer_loss']:.1e} | "
                     f"{'yes' if c['trajectories_identical'] else 'NO'} |")
    if "as_written_check" in res:
        c = res["as_written_check"]
        lines += [
            "", "## torchopt-as-written: a sane meta-gradient (own random numbers, so compared statistically)", "",
            f"{c['draws']} meta-gradients per side on the same {c['tasks']} tasks and theta_0 ({c['dtype']}).", "",
            "| finite | same shapes | norm ratio (as-written / metaopt) | per-tensor norm ratios | metaopt norm CV | "
            "cosine of the mean gradients | cosine within metaopt (noise) | post-adaptation return as-written / "
            "metaopt |",
            "|---|---|---:|---|---:|---:|---:|---:|",
            f"| {'yes' if c['finite'] else 'NO'} | {'yes' if c['same_shapes'] else 'NO'} | {c['norm_ratio']:.3f} | "
            f"{', '.join(f'{x:.2f}' for x in c['norm_ratio_per_tensor'])} | {c['norm_cv']:.3f} | "
            f"{c['cosine_of_means']:.4f} | {c['cosine_within_metaopt']:.4f} | "
            f"{c['post_return_as_written']:.2f} / {c['post_return_metaopt']:.2f} |",
        ]
    lines += [
        "",
        f"## One meta-iteration at the reference configuration ({res['comparison']['tasks']} tasks)",
        "",
        f"| method | {metric} median [ms] | {metric} IQR [ms] | {alt} median [ms] | reps | speedup vs baseline | "
        f"time / baseline | speedup ({alt}) | env steps / s | GFLOP/s | % of peak | peak mem. delta [MB] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["comparison"]["rows"]:
        lines.append(f"| {r['method']} | {_ms(time_of(r, metric))} | {_ms(r[p + 'q1_s'])}-{_ms(r[p + 'q3_s'])} | "
                     f"{_ms(time_of(r, alt))} | {r['reps']} | {r['speedup_vs_baseline']:.1f}x | "
                     f"{r['time_ratio_to_baseline']:.2f} | {r['speedup_vs_baseline_alt']:.1f}x | {_rate(r)} | "
                     f"{_mb(r)} |")
    if res.get("scale"):
        lines += ["", "## Scale: throughput and memory against the number of tasks", "",
                  f"| method | tasks | {metric} median [ms] | ms per task | env steps / s | GFLOP/s | % of peak | "
                  f"{alt} median [ms] | reps | peak mem. delta [MB] | speedup vs baseline |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        base = {r["tasks"]: time_of(r, metric) for r in res["scale"] if r["method"] == "baseline"}
        for r in res["scale"]:
            t = time_of(r, metric)
            sp = f"{base[r['tasks']] / t:.1f}x" if r["tasks"] in base else "-"
            lines.append(f"| {r['method']} | {r['tasks']} | {_ms(t)} | {_ms(t / r['tasks'])} | {_rate(r)} | "
                         f"{_ms(time_of(r, alt))} | {r['reps']} | {_mb(r)} | {sp} |")
    lines += ["", f"## Scaling in the unroll length K (metaopt-func, {res['unroll']['tasks']} tasks)", "",
              f"| mode | K | {metric} median [ms] | {alt} median [ms] | reps | peak mem. delta [MB] |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in res["unroll"]["rows"]:
        lines.append(f"| {r['mode']} | {r['inner_steps']} | {_ms(time_of(r, metric))} | {_ms(time_of(r, alt))} | "
                     f"{r['reps']} | {_mb(r)} |")
    lines += ["", "## PopArt overhead (metaopt-func, reference configuration)", "",
              f"| variant | {metric} median [ms] | {metric} IQR [ms] | reps | overhead | overhead ({alt}) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in res["popart"]:
        lines.append(f"| {r['variant']} | {_ms(time_of(r, metric))} | {_ms(r[p + 'q1_s'])}-{_ms(r[p + 'q3_s'])} | "
                     f"{r['reps']} | {100 * r['overhead']:+.1f}% | {100 * r['overhead_alt']:+.1f}% |")
    lines += ["", "## Targets (measured, not asserted)", "", "| target | measured | met |", "|---|---|---|"]
    for t in res["targets"]:
        name = f"{t['target']} *(extra)*" if t.get("extra") else t["target"]
        lines.append(f"| {name} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_results(res: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{name}.json", out / f"{name}.md"
    write_json(js, res, indent=1)
    write_text(md, render_markdown(res))
    return js, md
