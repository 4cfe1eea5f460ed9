"""Timing, memory measurement in child processes, and the run loop of the benchmark.

One run (:func:`run_bench`) measures, on the same tasks and random numbers:

* **machine** -- the achievable FLOP rate of ``torch.mm`` (a 1024-cube and the job's 8000x32x32 shape);
* **identical math** -- the ``baseline`` and ``torchopt-sequential-crn`` meta-gradients against metaopt's (float64
  and float32), and the ``torchopt-as-written`` meta-gradient statistically (its own random numbers);
* **comparison** -- one meta-iteration at TorchOpt's configuration for every row of
  :data:`~benchmarks.settings.METHODS`, with the achieved FLOP rate of each;
* **scale** -- throughput (env steps per second) and peak memory against the number of tasks;
* **unroll** -- time and peak memory against the number of inner steps ``K`` (full, ``truncate=1``, first-order);
* **popart** -- metaopt-func with and without PopArt (and with learned ``lr``/``beta``).

Timing: wall-clock and process CPU time of ``step(data)`` (rollouts, adaptation, outer loss, backward, outer Adam
step; task and noise sampling excluded for every method) after warm-up iterations; the median over repetitions is
reported. The comparison, scale and PopArt sections interleave their configurations repetition by repetition, so
that a change of machine load hits all of them alike; the unroll section times each configuration in its own child
process, together with its memory.

Memory (Unix): every row with a memory column runs in its own child process (``spawn``: a fresh interpreter;
``fork``: a forked copy of the harness). The child first runs one iteration of the same method on a one-task
problem (so code pages and lazily created state are resident), samples its data, collects garbage, returns freed
heap to the OS (``malloc_trim``), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``; without it
``ru_maxrss`` is used), and reports ``peak RSS - RSS before`` over its warm-up and timed iterations.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.baseline import TorchOptAsWritten, TorchOptCRN, check_identical_math, compare_as_written
from benchmarks.flops import iteration_flops, machine_rates
from benchmarks.report import evaluate_targets, loadavg, stamp, time_of
from benchmarks.settings import METHODS, UNROLL_MODES, BenchSettings
from metaopt.maml import MAMLConfig, MetaLearner

__all__ = ["make_step", "measure", "measure_isolated", "run_bench", "env_steps"]

ROOT = Path(__file__).resolve().parents[1]
StepFn = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------------- methods
def make_step(method: str, cfg: MAMLConfig) -> tuple[StepFn, Callable[[], Any]]:
    """A method's ``step(data)`` and a sampler of its iteration data.

    The sampler is a separate :class:`~metaopt.maml.MetaLearner` with the same seed, so every method sees the same
    tasks and random numbers and starts from the same ``theta_0``.

    Args:
        method: One of :data:`~benchmarks.settings.METHODS`.
        cfg: The configuration.

    Raises:
        ValueError: Unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sampler = MetaLearner(cfg)
    if method == "baseline":
        return TorchOptCRN(sampler.model, cfg, rollout="vector").step, sampler.sample_iteration
    if method == "torchopt-sequential-crn":
        return TorchOptCRN(sampler.model, cfg, rollout="sequential").step, sampler.sample_iteration
    if method == "torchopt-as-written":
        return TorchOptAsWritten(sampler.model, cfg).step, sampler.sample_iteration
    learner = MetaLearner(dataclasses.replace(cfg, engine=method.removeprefix("metaopt-")))
    return learner.step, sampler.sample_iteration


def env_steps(cfg: MAMLConfig) -> int:
    """Environment steps of one meta-iteration: two rollouts of ``tasks x trajectories x horizon``."""
    return 2 * cfg.tasks * cfg.trajectories * cfg.episode_length


# ---------------------------------------------------------------------------------------------------- timing
def _timed(step: StepFn, data: Any) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``step(data)``."""
    w, c = time.perf_counter(), time.process_time()
    step(data)
    return time.perf_counter() - w, time.process_time() - c


def _summary(wall: list[float], cpu: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(wall)}
    for prefix, xs in (("", wall), ("cpu_", cpu)):
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
        out |= {f"{prefix}median_s": statistics.median(xs), f"{prefix}min_s": min(xs), f"{prefix}q1_s": q[0],
                f"{prefix}q3_s": q[2], f"{prefix}times_s": xs}
    return out


def _interleaved(steps: dict[Any, StepFn], datas: dict[Any, list[Any]], warmup: int) -> dict[Any, dict[str, Any]]:
    """Time every entry of ``steps`` on its data, alternating entries within each repetition.

    Args:
        steps: ``step(data)`` by key.
        datas: The iteration data by key (equal lengths: ``warmup`` + timed repetitions).
        warmup: Untimed leading iterations.

    Returns:
        The timing summary by key.
    """
    times: dict[Any, list[tuple[float, float]]] = {k: [] for k in steps}
    for i in range(len(next(iter(datas.values())))):
        for k, step in steps.items():
            t = _timed(step, datas[k][i])
            if i >= warmup:
                times[k].append(t)
    return {k: _summary([w for w, _ in t], [c for _, c in t]) for k, t in times.items()}


# ---------------------------------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and (optionally) peak memory of one method and configuration, in the current process.

    Meant to run in a fresh child (:func:`measure_isolated`); see the module docstring for the method.

    Args:
        spec: ``method``, ``cfg`` (:class:`MAMLConfig` fields), ``warmup``, ``reps``, ``min_reps``, ``budget_s``,
            ``threads``, ``memory``.

    Returns:
        The timing summary plus ``rss_before_mb``, ``peak_rss_mb``, ``peak_delta_mb`` and ``memory_method`` when
        ``memory``.
    """
    torch.set_num_threads(int(spec["threads"]))
    for lib in ("higher", "torchopt"):  # imported up front so no method pays for it inside the measurement
        with contextlib.suppress(ImportError):
            __import__(lib)
    cfg = MAMLConfig(**spec["cfg"]).validate()
    method, memory = spec["method"], bool(spec.get("memory", True))
    primer_step, primer_data = make_step(method, dataclasses.replace(cfg, tasks=1))
    primer_step(primer_data())
    step, sample = make_step(method, cfg)
    warmup, reps = int(spec["warmup"]), int(spec["reps"])
    datas = [sample() for _ in range(warmup + reps)]
    del primer_step, primer_data
    mem_method, rss0 = "none", 0
    if memory:
        _release_memory()
        hwm = _reset_peak() and _status_kb("VmHWM") is not None
        mem_method = "VmHWM after clear_refs" if hwm else "ru_maxrss"
        rss0 = _status_kb("VmRSS") or _maxrss_kb()
    first = None
    for d in datas[:warmup]:
        dt = _timed(step, d)[0]
        first = dt if first is None else first
    if first is not None and first > 0:
        reps = max(int(spec.get("min_reps", 1)), min(reps, int(float(spec.get("budget_s", math.inf)) / first)))
    wall, cpu = zip(*(_timed(step, d) for d in datas[warmup:warmup + reps]), strict=True)
    out = {"method": method, "tasks": cfg.tasks, "inner_steps": cfg.inner_steps} | _summary(list(wall), list(cpu))
    if memory:
        peak = _status_kb("VmHWM") if mem_method.startswith("VmHWM") else _maxrss_kb()
        out |= {"rss_before_mb": rss0 / 1024, "peak_rss_mb": peak / 1024, "peak_delta_mb": (peak - rss0) / 1024,
                "memory_method": mem_method}
    return out


def _worker_entry() -> None:
    """Entry point of a ``spawn`` child: spec as JSON on stdin, result as the last stdout line."""
    spec = json.loads(sys.stdin.read())
    print(json.dumps(measure(spec)))


def measure_isolated(spec: dict[str, Any], *, isolation: str = "spawn", timeout_s: float = 600.0) -> dict[str, Any]:
    """Run :func:`measure` in a child process (``spawn``: new interpreter; ``fork``: forked copy, one thread only).

    Raises:
        RuntimeError: The child failed; the message carries its error output.
    """
    if isolation == "fork" and hasattr(os, "fork") and int(spec["threads"]) == 1:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                os.close(r)
                payload = json.dumps(measure(spec))
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                payload, code = json.dumps({"error": f"{type(err).__name__}: {err}"}), 1
            with os.fdopen(w, "w") as f:
                f.write(payload)
            os._exit(code)
        os.close(w)
        with os.fdopen(r) as f:
            payload = f.read()
        os.waitpid(pid, 0)
        result = json.loads(payload) if payload else {"error": "child produced no output"}
        if "error" in result:
            raise RuntimeError(f"benchmark child failed for {spec['method']}: {result['error']}")
        return result
    # The harness's own directory goes after any PYTHONPATH given, so an explicit PYTHONPATH keeps precedence.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    proc = subprocess.run(
        [sys.executable, "-c", "from benchmarks.harness import _worker_entry; _worker_entry()"],
        input=json.dumps(spec), capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path),
        timeout=timeout_s, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {spec['method']}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- run loop
def _spec(s: BenchSettings, method: str, cfg: MAMLConfig, *, warmup: int, reps: int) -> dict[str, Any]:
    return {"method": method, "cfg": cfg.to_dict(), "warmup": warmup, "reps": reps, "min_reps": s.min_reps,
            "budget_s": s.budget_s, "threads": s.threads, "memory": s.memory}


def _unroll_cfg(s: BenchSettings, k: int, mode: str) -> MAMLConfig:
    return s.config(inner_steps=k, truncate=1 if mode == "truncate1" else None, first_order=mode == "first_order")


def _rates(row: dict[str, Any], cfg: MAMLConfig, metric: str, peak_gflops: float) -> dict[str, float]:
    """Throughput and arithmetic rate of a row timed on ``cfg`` (FLOPs: the job's, :func:`iteration_flops`)."""
    t = time_of(row, metric)
    flops = iteration_flops(cfg)
    return {"env_steps_per_s": env_steps(cfg) / t, "tasks_per_s": cfg.tasks / t, "flops": flops,
            "gflops": flops / t / 1e9, "peak_fraction": flops / t / 1e9 / peak_gflops}


def run_bench(s: BenchSettings, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every section of the benchmark and return the results (see :func:`benchmarks.report.write_results`).

    Args:
        s: The settings (validated here).
        log: Progress messages.
    """
    s.validate()
    torch.set_num_threads(s.threads)
    t_start = time.perf_counter()
    res: dict[str, Any] = {"stamp": stamp(s.threads), "settings": dataclasses.asdict(s)}
    iso = s.isolation if s.threads == 1 else "spawn"
    res["settings"]["isolation_used"] = iso
    metric = s.metric

    log("machine: matmul FLOP rate")
    res["machine_rates"] = machine_rates(dtype=s.config().torch_dtype, min_time_s=s.matmul_time_s)
    peak = res["machine_rates"]["peak"]["gflops"]

    log("identical math: baseline vs metaopt-func meta-gradient")
    checks = [check_identical_math(s.config(dtype="float64"), rollout="vector"),
              check_identical_math(s.config(dtype="float32"), rollout="vector")]
    if s.sequential:
        checks.append(check_identical_math(s.config(dtype="float64"), rollout="sequential"))
    res["identical_math"] = checks
    if s.as_written:
        log(f"as-written sanity: {s.sanity_draws} meta-gradients per side")
        res["as_written_check"] = compare_as_written(s.config(), draws=max(2, s.sanity_draws))

    methods = [m for m in METHODS if (s.sequential or m != "torchopt-sequential-crn")
               and (s.as_written or m != "torchopt-as-written")]
    log(f"comparison at {s.tasks} tasks: {', '.join(methods)}")
    cfg = s.config()
    steps = {}
    for m in methods:
        steps[m], sample = make_step(m, cfg)
    datas = [sample() for _ in range(s.warmup + s.reps)]
    timing = _interleaved(steps, dict.fromkeys(steps, datas), s.warmup)
    alt = "wall" if metric == "cpu" else "cpu"
    rows = []
    for m in methods:
        row = {"method": m} | timing[m]
        for mt, suffix in ((metric, ""), (alt, "_alt")):
            ratio = time_of(timing[m], mt) / time_of(timing["baseline"], mt)
            row |= {f"speedup_vs_baseline{suffix}": 1.0 / ratio, f"time_ratio_to_baseline{suffix}": ratio}
        row |= _rates(row, cfg, metric, peak)
        if s.memory:
            mem = measure_isolated(_spec(s, m, cfg, warmup=1, reps=1), isolation=iso)
            row |= {k: mem[k] for k in ("peak_delta_mb", "memory_method")}
        rows.append(row)
    res["comparison"] = {"tasks": s.tasks, "rows": rows}
    del steps, datas

    res["scale"] = []
    if s.scale:
        configs = [(m, n) for m, counts in (("metaopt-func", s.task_counts), ("baseline", s.baseline_task_counts))
                   for n in counts]
        log(f"scale: timing {', '.join(f'{m}@{n}' for m, n in configs)} (interleaved)")
        steps, datas_by = {}, {}
        for m, n in configs:
            steps[(m, n)], sample = make_step(m, s.config(tasks=n))
            datas_by[(m, n)] = [sample() for _ in range(s.warmup + s.scaling_reps)]
        timing = _interleaved(steps, datas_by, s.warmup)
        del steps, datas_by
        for m, n in configs:
            row = {"method": m, "tasks": n, "inner_steps": 1} | timing[(m, n)]
            row |= _rates(row, s.config(tasks=n), metric, peak)
            if s.memory:
                log(f"scale: memory of {m} at {n} tasks")
                mem = measure_isolated(_spec(s, m, s.config(tasks=n), warmup=1, reps=1), isolation=iso)
                row |= {k: mem[k] for k in ("rss_before_mb", "peak_rss_mb", "peak_delta_mb", "memory_method")}
            res["scale"].append(row)

    rows = []
    for mode in UNROLL_MODES:
        for k in s.unroll:
            log(f"unroll: K={k} {mode}")
            spec = _spec(s, "metaopt-func", _unroll_cfg(s, k, mode), warmup=1, reps=s.scaling_reps)
            rows.append(measure_isolated(spec, isolation=iso) | {"mode": mode})
    res["unroll"] = {"tasks": s.tasks, "rows": rows}

    log("popart overhead (metaopt-func)")
    variants = {"no PopArt": s.config(), "PopArt": s.config(popart=True),
                "PopArt, learn lr+beta": s.config(popart=True, learn=("lr", "beta"), inner_steps=1)}
    steps = {}
    for name, c in variants.items():
        steps[name], sample = make_step("metaopt-func", c)
    datas = [sample() for _ in range(s.warmup + s.popart_reps)]
    timing = _interleaved(steps, dict.fromkeys(steps, datas), s.warmup)
    res["popart"] = [{"variant": n} | timing[n] | {
        "overhead": time_of(timing[n], metric) / time_of(timing["no PopArt"], metric) - 1.0,
        "overhead_alt": time_of(timing[n], alt) / time_of(timing["no PopArt"], alt) - 1.0,
    } for n in variants]

    res["targets"] = evaluate_targets(res)
    res["stamp"]["loadavg_end"] = loadavg()
    res["wall_time_s"] = time.perf_counter() - t_start
    return res
