r"""The study's statistics (:func:`summarize`) and its loop over estimators and sizes (:func:`run_estimator_study`).

torch is imported inside the functions, so that ``metaopt estimator-study --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from metaopt.verify.estimators import EstimatorProblem

__all__ = ["summarize", "run_estimator_study"]


# ------------------------------------------------------------------------------------------------ statistics
def _interval(values: Tensor, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``values``."""
    return values.quantile((1 - confidence) / 2).item(), values.quantile((1 + confidence) / 2).item()


def summarize(
    samples: Tensor,
    reference: Tensor,
    *,
    limit: Tensor | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    r"""Bias and variance of ``R`` sampled vectors against an exact reference.

    With :math:`\bar g` the mean, :math:`\hat\Sigma` the sample covariance (divisor :math:`R - 1`) and
    :math:`g^\star` the reference:

    .. math::
        \text{rel\_error} = \frac{\|\bar g - g^\star\|}{\|g^\star\|}, \quad
        \text{cosine} = \frac{\bar g \cdot g^\star}{\|\bar g\| \|g^\star\|}, \quad
        \widehat{b^2} = \|\bar g - g^\star\|^2 - \frac{\operatorname{tr}\hat\Sigma}{R}, \quad
        \text{rel\_bias} = \frac{\operatorname{sign}(\widehat{b^2}) \sqrt{|\widehat{b^2}|}}{\|g^\star\|},

    :math:`\mathbb E[\widehat{b^2}] = \|\mathbb E\hat g - g^\star\|^2` exactly, so the ``rel_bias`` interval
    covers 0 for an unbiased estimator; ``rel_error`` cannot fall below the noise floor
    :math:`\sqrt{\operatorname{tr}\hat\Sigma / R} / \|g^\star\|`. Intervals: bootstrap percentiles over the
    repeats (``bootstrap`` resamples). ``rel_variance`` is :math:`\operatorname{tr}\hat\Sigma / \|g^\star\|^2`
    (one estimate); ``z_max`` the largest per-coordinate :math:`|\bar g_i - g^\star_i| / \text{se}_i`.

    Args:
        samples: ``[R, P]``.
        reference: ``[P]`` exact value.
        limit: Optional ``[P]`` exact :math:`N \to \infty` limit of the estimator (reported as ``limit_rel_bias``).
        bootstrap: Number of bootstrap resamples.
        confidence: Interval level.
        seed: Bootstrap seed.

    Returns:
        A JSON-safe dict of floats and ``[lo, hi]`` pairs.
    """
    import torch

    from metaopt._validation import check_int, check_real

    if not isinstance(samples, torch.Tensor) or samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError(f"samples must be a [R, P] tensor with R >= 2, got {getattr(samples, 'shape', samples)}")
    if not isinstance(reference, torch.Tensor) or reference.shape != samples.shape[1:]:
        raise ValueError(f"reference must have shape [P] = {list(samples.shape[1:])}, got {reference!r}")
    check_int("bootstrap", bootstrap, low=10)
    check_real("confidence", confidence, low=0.0, high=1.0, low_open=True, high_open=True)
    x, ref = samples.double(), reference.double()
    r = x.shape[0]
    ref_norm = float(ref.norm())

    def stats(mean: Tensor, second: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # mean: [k, P]; second: [k] mean squared norms; returns |mean - ref|^2, cosine, b2, trace of the covariance
        tr = (second - (mean**2).sum(-1)) * r / (r - 1)
        diff2 = ((mean - ref) ** 2).sum(-1)
        cos = (mean @ ref) / (mean.norm(dim=-1) * ref_norm).clamp_min(1e-300)
        return diff2, cos, diff2 - tr / r, tr

    def rel(b2: Tensor | float) -> float:
        b2 = float(b2)
        return math.copysign(math.sqrt(abs(b2)), b2) / ref_norm

    sq = (x**2).sum(-1)
    diff2, cos, b2, tr = (v[0] for v in stats(x.mean(0, keepdim=True), sq.mean().reshape(1)))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, r, (bootstrap, r), generator=gen)
    ones = torch.ones(bootstrap, r, dtype=x.dtype)
    weights = torch.zeros_like(ones).scatter_add_(1, idx, ones) / r  # [bootstrap, R] resampling weights
    b_diff2, b_cos, b_b2, _ = stats(weights @ x, weights @ sq)
    # b2 is unbiased, but a resample's b2* is centred on the plug-in |mean - ref|^2, not on b2: use the basic
    # bootstrap interval b2 - (quantiles of b2* - |mean - ref|^2), then map its ends through rel().
    lo, hi = _interval(b_b2 - diff2, confidence)
    b2_ci = (rel(b2 - hi), rel(b2 - lo))
    se = x.std(0) / math.sqrt(r)
    z = ((x.mean(0) - ref).abs() / se.clamp_min(1e-300))[se > 0]
    out = {
        "repeats": r,
        "rel_error": float(diff2.sqrt()) / ref_norm, "rel_error_ci": _interval(b_diff2.sqrt() / ref_norm, confidence),
        "cosine": float(cos), "cosine_ci": _interval(b_cos, confidence),
        "rel_bias": rel(b2), "rel_bias_ci": b2_ci,
        "noise_floor": math.sqrt(max(float(tr), 0.0) / r) / ref_norm,
        "rel_variance": float(tr) / ref_norm**2,
        "z_max": float(z.max()) if z.numel() else 0.0,
        "reference_norm": ref_norm,
    }
    if limit is not None:
        out["limit_rel_bias"] = float((limit.double() - ref).norm()) / ref_norm
    return out


# ------------------------------------------------------------------------------------------------ the study
def run_estimator_study(
    problem: EstimatorProblem,
    *,
    estimators: Sequence[str] = ("surrogate", "lvc", "dice"),
    sizes: Sequence[int] = (10, 100, 1000, 10000),
    repeats: int = 100,
    engine: str = "func",
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    samples_out: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    r"""Bias and variance of each estimator's sampled MAML meta-gradient at each :math:`N`.

    For each :math:`N` in ``sizes``: ``repeats`` rollouts of :math:`N` trajectories per task (shared by the
    estimators), one inner step per estimator through :func:`metaopt.engines.adapt`, the exact outer
    meta-gradient, then :func:`summarize` against the exact :math:`g^\star` (with each estimator's exact
    :math:`N \to \infty` limit alongside).

    Args:
        problem: The problem (:func:`make_problem`).
        estimators: Estimator names.
        sizes: Numbers :math:`N` of inner trajectories per task.
        repeats: :math:`R` per :math:`N`.
        engine: ``"func"``, ``"higher"`` or ``"torchopt"``.
        bootstrap: Bootstrap resamples for the intervals.
        confidence: Interval level.
        seed: Base seed (size :math:`N` uses ``seed + N``).
        log: Optional progress printer.
        samples_out: Optional dict that receives the raw samples (``"{estimator}/{N}"`` -> ``[R, P]``) and the
            references (``"exact"``, ``"limit/{estimator}"``), e.g. to save with ``torch.save``.

    Returns:
        A JSON-safe dict: the settings, the exact references and one row per (estimator, :math:`N`).
    """
    from metaopt._validation import check_int
    from metaopt.verify.estimators import sample_meta_gradients

    for n in sizes:
        check_int("sizes", n, low=1)
    reference = problem.exact_meta_gradient(None)
    limits = {e: problem.exact_meta_gradient(None if e == "dice" else e) for e in estimators}
    rows = []
    if samples_out is not None:
        samples_out["exact"] = reference
        samples_out.update({f"limit/{e}": v for e, v in limits.items()})
    for n in sizes:
        samples, rollout_s = sample_meta_gradients(problem, estimators, n, repeats, engine=engine, seed=seed + n)
        for e in estimators:
            s = samples[e]
            if samples_out is not None:
                samples_out[f"{e}/{n}"] = s.meta_gradients
                samples_out[f"{e}/{n}/linearized"] = s.linearized
            row = {"estimator": e, "N": n, **summarize(s.meta_gradients, reference, limit=limits[e],
                                                        bootstrap=bootstrap, confidence=confidence, seed=seed)}
            lin = summarize(s.linearized, reference, bootstrap=bootstrap, confidence=confidence, seed=seed)
            row["linearized"] = {k: lin[k] for k in ("rel_bias", "rel_bias_ci", "rel_variance", "z_max")}
            row["seconds_per_repeat"] = s.seconds / repeats
            row["rollout_seconds_per_repeat"] = rollout_s / repeats
            rows.append(row)
            if log is not None:
                lo, hi = row["linearized"]["rel_bias_ci"]
                log(f"N={n:>6} {e:<9} rel_bias={row['rel_bias']:+.4f} [{row['rel_bias_ci'][0]:+.4f}, "
                    f"{row['rel_bias_ci'][1]:+.4f}]  linearized={row['linearized']['rel_bias']:+.4f} [{lo:+.4f}, "
                    f"{hi:+.4f}]  cos={row['cosine']:.4f}  rel_var={row['rel_variance']:.3g}  "
                    f"{row['seconds_per_repeat'] * 1e3:.1f} ms/repeat")
    return {
        "settings": {
            "policy": type(problem.model).__name__,
            "num_parameters": sum(p.numel() for p in problem.model.parameters()),
            "num_tasks": problem.tasks.num_tasks, "num_states": problem.num_states,
            "num_actions": problem.tasks.num_actions, "horizon": problem.horizon, "lr": problem.lr,
            "gamma": problem.gamma, "lam": problem.lam, "reduction": problem.reduction, "kappa": problem.kappa,
            "baseline": problem.baseline, "engine": engine, "repeats": repeats, "sizes": list(sizes),
            "bootstrap": bootstrap, "confidence": confidence, "seed": seed,
        },
        "exact": {
            "meta_gradient_norm": float(reference.norm()),
            "limit_rel_bias": {e: float((limits[e] - reference).norm() / reference.norm()) for e in estimators},
        },
        "rows": rows,
    }


