r"""One run of the study: meta-train a configuration, then measure its adaptation gain exactly.

The gain of a trained ``theta_0`` on a task is :math:`J(\theta') - J(\theta_0)`, with :math:`J` the *exact*
expected (undiscounted) return of :mod:`metaopt.exact` and :math:`\theta'` the weights after the configured
inner loop on sampled episodes (the adaptation is stochastic, as when the model is used; its randomness is
averaged over ``eval_repeats`` draws). Exact returns remove the Monte-Carlo noise of measuring returns by
rollouts, so the intervals across seeds show the spread of meta-training, not of the measurement.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaopt.artifacts import write_json
from metaopt.envs import TaskBatch, sample_tasks
from metaopt.exact import exact_maml_return, expected_return, policy_logits
from metaopt.maml import MAMLConfig, MetaLearner

__all__ = ["RunSpec", "exact_gains", "execute", "t_interval", "TEST_SEED", "cache_key", "valid_cached"]

#: Seed of the fixed test tasks (the same base tasks for every method, seed and scale).
TEST_SEED = 2_024_1123


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study.

    Attributes:
        part: The study part it belongs to.
        method: Method label (one line in the report).
        value: The swept value of the method's parameter (or ``None``).
        seed: Seed of the run.
        config: :class:`MAMLConfig` fields of the run.
        scales: Reward scales ``c`` at which the trained model is evaluated.
        eval_tasks: Number of fixed test tasks.
        eval_trajectories: Episodes per inner step of the evaluation's adaptation (default: the training's).
        eval_repeats: Adaptations per test task (averaged).
        trainer: ``"job"`` (:meth:`MetaLearner.step`, sampled meta-gradients) or ``"exact"`` (the exact MAML
            objective's meta-gradient; the ceiling).
        limit: Also measure the N -> infinity adaptation gain (:func:`exact_limit_gains`).
    """

    part: str
    method: str
    value: float | None
    seed: int
    config: dict[str, Any] = field(hash=False)
    scales: tuple[float, ...] = (1.0,)
    eval_tasks: int = 40
    eval_trajectories: int | None = None
    eval_repeats: int = 4
    trainer: str = "job"
    limit: bool = False

    @property
    def key(self) -> str:
        """A file-name-safe identifier (the cache key of the run's result)."""
        value = "" if self.value is None else f"_{self.value:g}"
        return f"{self.part}__{self.method}{value}__s{self.seed}".replace(" ", "-").replace("/", "-")


def _at_scales(base: TaskBatch, scales: tuple[float, ...]) -> TaskBatch:
    """``base``'s tasks once per scale ``c`` (rewards times ``c``), concatenated scale by scale."""
    n = len(scales)
    c = torch.tensor(scales, dtype=base.scales.dtype, device=base.scales.device).repeat_interleave(base.num_tasks)
    return TaskBatch(base.transitions.repeat(n, 1, 1, 1), base.reward_means.repeat(n, 1, 1), c)


@torch.no_grad()
def _returns(learner: MetaLearner, tasks: TaskBatch, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
    s, t64 = learner.cfg.num_states, tasks.to(dtype=torch.float64)
    if params is None:
        logits = policy_logits(learner.model, num_states=s).to(torch.float64)
    else:
        logits = torch.func.vmap(lambda p: policy_logits(learner.model, p, num_states=s))(params).to(torch.float64)
    return expected_return(t64, logits, horizon=learner.cfg.episode_length)


def exact_gains(learner: MetaLearner, base: TaskBatch, scales: tuple[float, ...], *, trajectories: int,
                repeats: int, seed: int) -> torch.Tensor:
    """Scale-normalized exact gains ``(J(theta') - J(theta_0)) / c``, ``[len(scales), tasks]``, mean over repeats.

    All scales' tasks adapt in one vectorized batch (``func`` engine) with common random numbers per repeat.
    """
    tasks = _at_scales(base, scales)
    c = tasks.scales.to(torch.float64)
    pre = _returns(learner, tasks, None)
    total = torch.zeros_like(pre)
    for rep in range(repeats):
        gen = torch.Generator(device=learner.cfg.torch_device).manual_seed(seed * 1009 + rep)
        noise = tuple(learner._noise(tasks.num_tasks, trajectories, gen) for _ in range(learner.cfg.num_inner_steps))
        r = learner.adapt_and_rollout(tasks, noise, None, "func")
        total += _returns(learner, tasks, {k: v.detach() for k, v in r.adapted.items()}) - pre
    return (total / repeats / c).view(len(scales), base.num_tasks)


def exact_limit_gains(learner: MetaLearner, base: TaskBatch, scales: tuple[float, ...]) -> torch.Tensor:
    """``(J(theta_0 + lr kappa grad J(theta_0)) - J(theta_0)) / c``, ``[len(scales), tasks]``: the N -> infinity step.

    The adaptation the sampled A2C step (mean over the ``T x B`` visits, ``kappa = 1/T``) approaches with infinitely
    many episodes, with the exact policy gradient (inner discount ``gamma``), from the trained ``theta_0``.
    """
    c = learner.cfg
    t64 = _at_scales(base, scales).to(dtype=torch.float64)
    params = {k: v.detach().to(torch.float64) for k, v in learner.model.named_parameters()}
    model64 = copy.deepcopy(learner.model).to(torch.float64)

    def logits(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return policy_logits(model64, p, num_states=c.num_states)

    post = exact_maml_return(logits, params, t64, lr=c.inner_lr, steps=c.num_inner_steps, horizon=c.episode_length,
                             inner_gamma=c.gamma, grad_scale=1.0 / c.episode_length).detach()
    pre = expected_return(t64, logits(params).detach(), horizon=c.episode_length)
    return ((post - pre) / t64.scales).view(len(scales), base.num_tasks)


def _train_exact(learner: MetaLearner) -> list[dict[str, Any]]:
    """Meta-train ``theta_0`` on the exact MAML objective ``sum_tasks J(theta_0 + lr kappa grad J(theta_0))``.

    The ceiling of the sampled estimators: the meta-gradient is exact (:func:`metaopt.exact.exact_maml_return`),
    on the same task stream and with the same outer Adam as the job.
    """
    c = learner.cfg
    opt = torch.optim.Adam(learner.model.parameters(), lr=c.outer_lr)

    def logits(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return policy_logits(learner.model, p, num_states=c.num_states)

    curve = []
    for i in range(c.iterations):
        tasks = learner.sample_tasks(c.tasks).to(dtype=c.torch_dtype)
        params = dict(learner.model.named_parameters())
        post = exact_maml_return(logits, params, tasks, lr=c.inner_lr, steps=c.num_inner_steps,
                                 horizon=c.episode_length, inner_gamma=c.gamma, grad_scale=1.0 / c.episode_length)
        opt.zero_grad(set_to_none=True)
        (-post.sum() / c.episode_length).backward()
        opt.step()
        learner.iteration += 1
        if (i + 1) % max(1, c.iterations // 10) == 0:
            curve.append({"iteration": i + 1, "train_post_exact": float(post.mean())})
    return curve


def _eval_settings(spec: RunSpec) -> dict[str, Any]:
    return {"eval_tasks": spec.eval_tasks, "eval_trajectories": spec.eval_trajectories,
            "eval_repeats": spec.eval_repeats, "limit": spec.limit}


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """Metaopt's version and a SHA-256 of its Python sources (any code change gives a new cache key)."""
    import metaopt

    root = Path(metaopt.__file__).parent
    h = hashlib.sha256(metaopt.__version__.encode())
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(spec: RunSpec, cfg: MAMLConfig) -> str:
    """SHA-256 of everything a cached result depends on.

    The run's settings, the resolved configuration and the code version (:func:`_code_version`).
    """
    settings = {"part": spec.part, "method": spec.method, "value": spec.value, "seed": spec.seed,
                "config": cfg.to_dict(), "scales": list(spec.scales), "trainer": spec.trainer,
                "eval": _eval_settings(spec), "test_seed": TEST_SEED, "code": _code_version()}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def valid_cached(path: Path, spec: RunSpec, cfg: MAMLConfig) -> dict[str, Any] | None:
    """The cached result at ``path`` if it is a whole, consistent result of exactly this run and code, else ``None``.

    Checks: readable JSON object; ``cache_key`` equal to :func:`cache_key` (settings and code version); the
    fields' types; and for a completed run, ``gain_per_task`` of ``len(scales) x eval_tasks`` finite numbers
    whose means are the stored ``gain_by_scale``, ``mean_gain`` and ``worst_gain``.
    """
    try:
        cached = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("cache_key") != cache_key(spec, cfg):
        return None
    if not isinstance(cached.get("status"), str) or not isinstance(cached.get("final"), dict) \
            or not isinstance(cached.get("curve"), list):
        return None
    if cached["status"] != "completed":
        return cached if cached.get("gain_by_scale") is None else None
    gains = cached.get("gain_per_task")
    if (not isinstance(gains, list) or len(gains) != len(spec.scales)
            or any(not isinstance(r, list) or len(r) != spec.eval_tasks or not all(map(_is_number, r)) for r in gains)):
        return None
    by_scale = [sum(r) / len(r) for r in gains]
    stored = cached.get("gain_by_scale")
    if (not isinstance(stored, list) or len(stored) != len(by_scale) or not all(map(_is_number, stored))
            or any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(stored, by_scale, strict=True))):
        return None
    for key, want in (("mean_gain", sum(by_scale) / len(by_scale)), ("worst_gain", min(by_scale))):
        got = cached.get(key)
        if not isinstance(got, int | float) or not _is_number(got) or abs(got - want) > 1e-9 * max(1.0, abs(want)):
            return None
    return cached


def execute(spec: RunSpec, out: Path | None = None) -> dict[str, Any]:
    """Train ``spec``'s configuration, evaluate it, and (with ``out``) cache the result as ``out/<key>.json``.

    A run whose result file is valid for the same settings and code (:func:`valid_cached`) is not repeated (the
    study resumes at run granularity); a changed configuration or code version, or a truncated, mistyped or
    inconsistent file, trains again and replaces it.
    """
    path = None if out is None else out / f"{spec.key}.json"
    cfg = MAMLConfig(**spec.config).validate()
    if path is not None and path.is_file():
        cached = valid_cached(path, spec, cfg)
        if cached is not None:
            return cached
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    learner = MetaLearner(cfg)
    curve: list[dict[str, Any]] = []
    signal: dict[str, list[float]] = {}
    status = "completed"
    try:
        if spec.trainer == "exact":
            curve = _train_exact(learner)
        for i in range(cfg.iterations if spec.trainer == "job" else 0):
            row = learner.step()
            for name in ("grad_logit_beta", "grad_log_lr", "live_units", "logit_spread"):
                if name in row:
                    signal.setdefault(name, []).append(row[name])
            if (i + 1) % max(1, cfg.iterations // 10) == 0:
                curve.append({k: row[k] for k in ("iteration", "train_pre_return", "train_post_return", "lr",
                                                  "beta")})
    except Exception as err:  # a diverged run is a result (reported), not a crash of the study
        status = f"failed at iteration {learner.iteration + 1}: {type(err).__name__}: {str(err)[:200]}"
    train_s = time.perf_counter() - t0
    base = sample_tasks(spec.eval_tasks, num_states=cfg.num_states, num_actions=cfg.num_actions, seed=TEST_SEED)
    gains: list[list[float]] | None = None
    if status == "completed":
        g = exact_gains(learner, base, spec.scales, trajectories=spec.eval_trajectories or cfg.trajectories,
                        repeats=spec.eval_repeats, seed=spec.seed)
        gains = g.tolist() if bool(torch.isfinite(g).all()) else None
        status = status if gains is not None else "non-finite evaluation"
        if spec.limit and gains is not None:
            limit = exact_limit_gains(learner, base, spec.scales)
            limit_by_scale = [float(x) for x in limit.mean(1)]
    by_scale = None if gains is None else [sum(row) / len(row) for row in gains]
    result: dict[str, Any] = {
        "key": spec.key, "cache_key": cache_key(spec, cfg), "part": spec.part, "method": spec.method,
        "value": spec.value, "seed": spec.seed,
        "trainer": spec.trainer, "eval": _eval_settings(spec),
        "status": status, "scales": list(spec.scales), "config": cfg.to_dict(),
        "gain_by_scale": by_scale,
        "gain_per_task": gains, "final": learner.meta.summary() | learner.health(), "curve": curve, "signal": signal,
        "train_s": round(train_s, 2), "wall_s": round(time.perf_counter() - t0, 2),
    }
    if by_scale is not None:
        result["mean_gain"] = sum(by_scale) / len(by_scale)
        result["worst_gain"] = min(by_scale)
        if spec.limit:
            result["limit_gain_by_scale"] = limit_by_scale
            result["mean_limit_gain"] = sum(limit_by_scale) / len(limit_by_scale)
    if path is not None:
        write_json(path, result)
    return result


#: Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval (``nan`` half-width for one value)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
