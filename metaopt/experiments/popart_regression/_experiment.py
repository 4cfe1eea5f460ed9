"""One Fig. 1a run: :func:`run_experiment` for several methods, and its :class:`Results`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metaopt.experiments.popart_regression._online import OnlineSpec, simulate_online
from metaopt.experiments.popart_regression._protocols import (
    DEFAULT_METHODS,
    PROTOCOLS,
    MethodSpec,
    Protocol,
    _check_arguments,
)
from metaopt.experiments.popart_regression._simulation import (
    binary_code,
    init_params,
    make_targets,
    moving_average,
    outlier_positions,
    simulate,
)

__all__ = ["Results", "run_experiment"]


@dataclass(frozen=True)
class Results:
    """Outcome of :func:`run_experiment`.

    Attributes:
        seeds: Number of seeds.
        steps: Samples per run.
        seed: Base seed (seed ``i`` uses ``seed + i``).
        window: Moving-average width of the curves.
        dtype: Simulation dtype name.
        specs: Hyperparameters per method (in run order).
        outliers: 0-based sample indices with the outlier target.
        squared_errors: Per method, ``[seeds, steps]`` squared test errors.
        curves: Per method, ``[seeds, steps]`` smoothed RMSE (:func:`moving_average` of ``|e|``).
        wall_time_s: Per method, seconds of simulation.
        protocol_name: Name of the protocol in :data:`PROTOCOLS`, or ``"custom"`` after overrides.
        protocol: The :class:`Protocol` that ran (with the effective ART lr).
        hyper: Per method whose hyperparameters were learned online, ``{"lr", "beta"}`` of shape
            ``[seeds, steps]``: the values each update used.
        online: How PopArt's hyperparameters were learned (``None``: fixed).
    """

    seeds: int
    steps: int
    seed: int
    window: int
    dtype: str
    specs: dict[str, MethodSpec]
    outliers: list[int]
    squared_errors: dict[str, Tensor]
    curves: dict[str, Tensor]
    wall_time_s: dict[str, float] = field(default_factory=dict)
    protocol_name: str = "paper"
    protocol: Protocol = PROTOCOLS["paper"]
    hyper: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    online: OnlineSpec | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        """Method names in run order."""
        return tuple(self.specs)

    def quantiles(self, method: str) -> dict[str, Tensor]:
        """Median and 10th/90th percentiles over seeds of ``method``'s curve: ``{"median", "p10", "p90"}``."""
        q = torch.quantile(self.curves[method], torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64), dim=0)
        return {"median": q[0], "p10": q[1], "p90": q[2]}

    def final(self, method: str) -> dict[str, float]:
        """Median and 10th/90th percentiles over seeds of the final smoothed RMSE."""
        return {k: float(v[-1]) for k, v in self.quantiles(method).items()}

    def rmse_inliers(self, method: str) -> dict[str, float]:
        r"""Median and 10th/90th percentiles over seeds of each seed's RMSE over all samples except the outliers.

        Per seed :math:`\sqrt{\mathrm{mean}_{t \notin O} e_t^2}`, ``O`` the outlier positions; a seed whose errors
        are not finite (a diverged run) counts as ``inf`` (a quantile that reaches one is ``inf``).
        """
        keep = torch.ones(self.steps, dtype=torch.bool)
        keep[self.outliers] = False
        per_seed = self.squared_errors[method][:, keep].mean(1).sqrt()
        per_seed = torch.where(torch.isfinite(per_seed), per_seed, torch.inf)  # a diverged seed counts as the worst
        return {k: _quantile(per_seed, q) for k, q in (("median", 0.5), ("p10", 0.1), ("p90", 0.9))}

    def final_hyper(self, method: str) -> dict[str, dict[str, float]]:
        """The ``lr`` and ``beta`` of the last update: median and 10th/90th percentiles over seeds.

        Fixed methods report their values; seeds whose values are NaN (diverged) are left out.
        """
        spec = self.specs[method]
        if method not in self.hyper:
            fixed = {"lr": spec.lr, "beta": spec.beta}
            return {k: {"median": v, "p10": v, "p90": v} for k, v in fixed.items() if v is not None}
        out = {}
        for k, v in self.hyper[method].items():
            q = torch.nanquantile(v[:, -1].to(torch.float64), torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64))
            out[k] = {"median": float(q[0]), "p10": float(q[1]), "p90": float(q[2])}
        return out


def _quantile(x: Tensor, q: float) -> float:
    """``torch.quantile``'s linear interpolation, where a neighbour at ``inf`` gives ``inf`` (not NaN)."""
    v = x.sort().values
    pos = q * (len(v) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
    frac = pos - lo
    if frac == 0 or bool(v[hi] == v[lo]):
        return float(v[lo])
    return float(v[lo] + frac * (v[hi] - v[lo]))


def run_experiment(
    seeds: int = 50,
    steps: int = 5000,
    methods: str | Sequence[str] = ("sgd", "art", "popart"),
    *,
    protocol: str | Protocol = "paper",
    art_lr: float | None = None,
    record: str | None = None,
    head_init: str | None = None,
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
    window: int = 10,
    learn: str | Sequence[str] = (),
    beta: float | None = None,
    lr: float | None = None,
    truncation: int = 10,
    meta_lr: float = 3e-2,
    meta_scale: str = "sigma",
    huber: float | None = 1.0,
    carry: bool = True,
    reattach: str = "pop",
    mode: str = "truncated",
    log: Callable[[str], None] | None = None,
) -> Results:
    """Run the Fig. 1a binary regression for several methods, all seeds vectorized.

    Args:
        seeds: Number of independent runs (>= 1), simulated together.
        steps: Samples per run (>= 1).
        methods: Names from :data:`DEFAULT_METHODS`, as a sequence or a comma-separated string.
        protocol: ``"paper"``, ``"reproduction"`` (see :data:`PROTOCOLS`) or a :class:`Protocol`.
        art_lr: Override the protocol's ART learning rate.
        record: Override the protocol's ``record`` (``"before"``/``"after"``).
        head_init: Override the protocol's ``head_init`` (``"default"``/``"ones"``).
        dtype: ``"float32"`` or ``"float64"`` (or the torch dtype) for parameters and statistics.
        seed: Base seed; seed ``i`` draws its initial weights and then its targets from
            ``torch.Generator().manual_seed(seed + i)``, so seed ``i`` of a batch equals a batch of one
            with base seed ``seed + i``. Both head inits and both protocols see the same data and body.
        window: Width of the moving average of the per-sample RMSE.
        learn: PopArt hyperparameters learned online (``"beta"``, ``"lr"``; see
            :mod:`~metaopt.experiments.popart_regression._online`); empty: fixed.
        beta: PopArt's ``beta`` (the initial value when learned); default the paper's ``10^-0.5``.
        lr: PopArt's lr (the initial value when learned); default the paper's ``10^-2.5``.
        truncation: Meta-gradient window ``k`` (samples) when learning.
        meta_lr: Adam's step size on ``log lr`` and ``logit beta``.
        meta_scale: Scale of the meta-objective's error: ``"sigma"`` (sg of PopArt's sigma) or ``"rms"`` (a running
            RMS of the seed's errors).
        huber: Huber threshold of the scaled meta-error (``None``: squared).
        carry: Carry the statistics' whole-lifetime sensitivity to ``beta``.
        reattach: ``"pop"`` or ``"normalized"`` (see :mod:`metaopt.online`).
        mode: ``"truncated"`` or ``"forward"`` (the exact whole-lifetime meta-gradient; see :mod:`metaopt.online`).
        log: Optional callback for one progress line per method.

    Returns:
        The :class:`Results`.

    Raises:
        ValueError, TypeError: On invalid arguments, before any work.
    """
    names, torch_dtype, protocol_name, proto, popart_spec, online = _check_arguments(
        seeds=seeds, steps=steps, methods=methods, protocol=protocol, art_lr=art_lr, record=record,
        head_init=head_init, dtype=dtype, seed=seed, window=window, learn=learn, beta=beta, lr=lr,
        truncation=truncation, meta_lr=meta_lr, meta_scale=meta_scale, huber=huber, carry=carry, reattach=reattach,
        mode=mode,
    )
    specs = {m: popart_spec if m == "popart" else DEFAULT_METHODS[m] for m in names}
    if "art" in specs:
        specs["art"] = specs["art"]._replace(lr=proto.art_lr)

    per_seed_params, per_seed_targets = [], []
    for i in range(seeds):
        gen = torch.Generator().manual_seed(seed + i)
        per_seed_params.append(init_params(gen, dtype=torch_dtype, head_init=proto.head_init))
        per_seed_targets.append(make_targets(steps, gen))
    params = [torch.stack(ps) for ps in zip(*per_seed_params, strict=True)]
    params[-2], params[-1] = params[-2].squeeze(1), params[-1].squeeze(1)  # head: W [S, 10], b [S]
    int_targets = torch.stack(per_seed_targets, dim=1)  # [steps, S]
    inputs = binary_code(int_targets, dtype=torch_dtype)
    targets = int_targets.to(torch_dtype)

    squared, curves, wall, hyper = {}, {}, {}, {}
    for name, spec in specs.items():
        start = time.perf_counter()
        if name == "popart" and online is not None:
            assert spec.beta is not None
            sq, lrs, betas = simulate_online(spec.lr, spec.beta, online, params, targets, inputs)
            hyper[name] = {"lr": lrs.to(torch.float64), "beta": betas.to(torch.float64)}
        else:
            sq = simulate(spec, params, targets, inputs, record=proto.record)
        sq = sq.to(torch.float64)
        wall[name] = time.perf_counter() - start
        squared[name], curves[name] = sq, moving_average(sq.sqrt(), window)
        if log is not None:
            log(f"{name}: {seeds} seeds x {steps} steps in {wall[name]:.1f} s")
    return Results(
        seeds,
        steps,
        seed,
        window,
        str(torch_dtype).removeprefix("torch."),
        specs,
        outlier_positions(steps),
        squared,
        curves,
        wall,
        protocol_name,
        proto,
        hyper,
        online,
    )
