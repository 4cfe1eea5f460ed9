r"""PopArt paper Fig. 1a: binary regression with SGD, ART and PopArt, vectorized over seeds.

The experiment (van Hasselt et al., 2016, §3): targets are uniform integers in ``0..1023``; the input is
the target's 16-bit binary code (most significant bit first, zero-padded, floats 0/1). Every
``OUTLIER_PERIOD = 1000`` samples one target is the outlier ``65535`` (all 16 bits set). Samples are fed
one at a time; before the SGD step on sample ``t`` its squared error on the current model is recorded (the
"test error"; whether ART has already seen ``Y_t`` then is a protocol choice, see below).

**Outlier positions.** Sample indices ``1000, 2000, 3000, 4000`` (0-based ``t > 0`` with
``t % 1000 == 0``): each run starts with 1000 ordinary samples, and with 5000 samples the last window is
outlier free. (Placing them at ``999, 1999, ...`` would put one on the very last sample, and the final RMSE
would be the outlier spike ≈ 6.7k rather than the ≈ 17 (PopArt) / 255 (SGD) the seed reproduction reports.)

**Network.** ``16 → 4 × [Linear(·, 10), tanh] → Linear(10, 1)``, every layer initialized like PyTorch's
``nn.Linear`` (``kaiming_uniform_(a=√5)`` weights, ``U(±1/√fan_in)`` biases), drawn per seed from
``torch.Generator().manual_seed(seed + i)``, which then draws that seed's targets. All methods share the
initial weights and the data of a seed. (The ``reproduction`` protocol then sets the output layer to
``weight = 1, bias = 0``.)

**Methods** (one SGD step on ``½ δ²`` per sample; for ART/PopArt with ``δ = n(x) − (Y − μ')/σ'``, the
statistics updated by :func:`metaopt.popart.art` on ``Y_t`` *before* the step):

========  ===================  ===========  ================================================
method    lr ``α``             ``β``        per sample
========  ===================  ===========  ================================================
sgd       ``10^-3.5``          –            SGD on ``½ (n(x) − Y)²``
art       ``10^-2.5`` (paper)  ``1e-4``     ART, then SGD on the normalized loss (no POP)
popart    ``10^-2.5``          ``10^-0.5``  ART, POP (:func:`metaopt.popart.pop`), then SGD
========  ===================  ===========  ================================================

**Protocols** (:data:`PROTOCOLS`, ``--protocol``). ``paper`` (the default) reads the paper literally: the
test error of sample ``t`` is ``f(x_t) = σ n(x_t) + μ`` with the statistics *before* ART sees ``Y_t``,
every layer has PyTorch's ``nn.Linear`` init, ART's lr is the paper's ``10^-2.5``. ``reproduction`` makes
the seed reproduction's choices (Pop-Art-Translation, ``Agent.py``): ART (and POP) run on ``Y_t`` *before*
the error is recorded (``|σ' n(x_t) + μ' − Y_t|``), the output layer starts at ``weight = 1, bias = 0``,
and ART's lr is ``10^-3.5``. Choices that the reproduction makes and that change nothing here: ``½ MSE``
(used by both), separate SGD optimizers for body and head (the same update as one SGD step, checked in
``tests/test_popart.py``), the window-10 moving average and the median over 50 seeds (the final value is
the same with or without partial windows). Not replicated: its data layout (5004 samples with outliers at
1000, 2001, 3002, 4003) and its textbook ``ν − μ²`` statistics in float32. ``--record``, ``--head-init``
and ``--art-lr`` override one choice at a time.

**What drives ART's gap** (50 seeds, float32, final median RMSE; ``p10–p90``): recording after ART changes
nothing measurable (ART's ``β = 1e-4`` moves ``σ, μ`` by tiny amounts per sample, and at POP the output is
preserved). The gap comes from the head init and ART's lr *together*: paper 243 (120–309); head ``ones``
only 239; lr ``10^-3.5`` only 298; both (= reproduction) 133 (94–231), and 140 (101–181) on seeds 50–99.
The body's gradient flows through ``W``: with ``W = 1`` (``‖W‖² = 10``) instead of ``nn.Linear``'s
``U(±0.32)`` (``E‖W‖² ≈ 0.33``) a body step moves the output far more, so a smaller lr suits the ``ones``
head. ART's final RMSE is sensitive to lr with either head: default head 478 / 298 / 88 / 243 and ``ones``
head 235 / 133 / 63 / 239 at lr ``10^-4 / 10^-3.5 / 10^-3 / 10^-2.5``. With the paper's ``10^-2.5`` the median seed
does not recover from the first outlier (median ``σ`` jumps from ≈ 175 to ≈ 680 and the normalized error on
the outlier is ≈ 91, one huge SGD step). SGD and PopArt hardly depend on the protocol (SGD 248.5 / 248.6,
PopArt 17.2 / 16.8).

**Vectorization.** All seeds run at once: every parameter carries a leading ``[seeds]`` dimension, and the
statistics are one :class:`~metaopt.popart.PopArtState` with ``num_outputs = seeds`` (the head weight
``[seeds, 10]`` is a ``[rows, in_features]`` layer whose row ``i`` uses statistic ``i``). Gradients are
written out by hand (backpropagation through ``tanh`` with batched matmuls) under ``torch.no_grad()``;
the test suite checks them against autograd. Only the time loop runs in Python.

**Curve.** Per seed, the per-sample RMSE ``√(e_t²) = |e_t|`` smoothed by a trailing moving average of
width ``window = 10`` (partial windows at the start):

.. math::
    r_t = \frac{1}{\min(t+1, w)} \sum_{k=\max(0, t-w+1)}^{t} |e_k|,

then the median and the 10th/90th percentiles over seeds. An outlier's error (≈ 65k) therefore shows as a
spike of ≈ 6.7k, as in the seed reproduction; the final RMSE is ``r`` at the last sample.

**Dtype and speed.** ``float32`` by default: at these sizes per-operation overhead dominates, so it runs as
fast as ``float64`` (about 1.5–2 s per method for 50 seeds × 5000 samples on a 2-core CPU). Trajectories
of the two dtypes drift apart after the outliers, but the statistics agree (seed 0, final median RMSE:
PopArt 17.2 / 18.4, SGD 249 / 261 in float32 / float64).

"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from metaopt import popart
from metaopt._validation import check_choice, check_positive

__all__ = [
    "BITS",
    "MAX_TARGET",
    "OUTLIER_TARGET",
    "OUTLIER_PERIOD",
    "HIDDEN",
    "MethodSpec",
    "DEFAULT_METHODS",
    "DTYPES",
    "RECORD_CHOICES",
    "HEAD_INITS",
    "Protocol",
    "PROTOCOLS",
    "Results",
    "binary_code",
    "outlier_positions",
    "make_targets",
    "init_params",
    "simulate",
    "resolve_protocol",
    "moving_average",
    "run_experiment",
    "format_table",
    "write_outputs",
    "add_arguments",
    "run",
]

BITS = 16
MAX_TARGET = 1023
OUTLIER_TARGET = 2**BITS - 1
OUTLIER_PERIOD = 1000
#: Hidden layer sizes of the body (four tanh layers of 10 units).
HIDDEN = (10, 10, 10, 10)


class MethodSpec(NamedTuple):
    """Hyperparameters of one method.

    Attributes:
        lr: SGD step size ``alpha``.
        beta: ART step size, or ``None`` for plain SGD on unnormalized targets.
        pop: Whether POP rescales the last layer after each ART update.
    """

    lr: float
    beta: float | None
    pop: bool


#: The paper's hyperparameters (Fig. 1a).
DEFAULT_METHODS: dict[str, MethodSpec] = {
    "sgd": MethodSpec(lr=10**-3.5, beta=None, pop=False),
    "art": MethodSpec(lr=10**-2.5, beta=1e-4, pop=False),
    "popart": MethodSpec(lr=10**-2.5, beta=10**-0.5, pop=True),
}

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: When the test error of sample ``t`` is recorded, relative to ART (and POP) on ``Y_t``.
RECORD_CHOICES = ("before", "after")
#: How the output layer starts: PyTorch's ``nn.Linear`` init, or ``weight = 1, bias = 0``.
HEAD_INITS = ("default", "ones")


class Protocol(NamedTuple):
    """Choices of a Fig. 1a run beyond the methods' hyperparameters (see the module docstring).

    Attributes:
        record: ``"before"``: the test error of sample ``t`` uses the statistics before ART sees ``Y_t``;
            ``"after"``: ART (and POP) run on ``Y_t`` first and the error uses the new statistics
            ``|sigma' n(x_t) + mu' - Y_t|`` (with POP ``f(x_t)`` is unchanged, so only ART is affected).
        head_init: ``"default"`` (``nn.Linear``'s init) or ``"ones"`` (``weight = 1``, ``bias = 0``).
        art_lr: ART's SGD step size.
    """

    record: str
    head_init: str
    art_lr: float


#: ``paper``: the paper's hyperparameters and the natural reading of its protocol (the default).
#: ``reproduction``: the seed author's reproduction (Pop-Art-Translation, ``Agent.py``).
PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(record="before", head_init="default", art_lr=10**-2.5),
    "reproduction": Protocol(record="after", head_init="ones", art_lr=10**-3.5),
}

Params = list[Tensor]  # [W1, b1, ..., W4, b4, W_head, b_head], each with a leading [seeds] dim


# ----------------------------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _parse_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    if not names or any(not isinstance(m, str) or not m for m in names):
        raise ValueError(f"methods must be a non-empty list of names from {sorted(DEFAULT_METHODS)}, got {methods!r}")
    unknown = [m for m in names if m not in DEFAULT_METHODS]
    if unknown:
        raise ValueError(
            f"methods: unknown method(s) {unknown} in {methods!r}; expected names from {sorted(DEFAULT_METHODS)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"methods must not repeat a method, got {methods!r}")
    return tuple(names)


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")


# ------------------------------------------------------------------------------------------------------- data


def binary_code(targets: Tensor, *, bits: int = BITS, dtype: torch.dtype = torch.float32) -> Tensor:
    """Binary code of integer targets, most significant bit first.

    Args:
        targets: Integer tensor of any shape with values in ``[0, 2**bits)``.
        bits: Code length.
        dtype: Dtype of the code.

    Returns:
        ``[*targets.shape, bits]`` tensor of 0/1 values; e.g. ``5 -> [0, ..., 0, 1, 0, 1]``.
    """
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got dtype {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= 2**bits):
        raise ValueError(f"targets must lie in [0, {2**bits}), got range [{int(targets.min())}, {int(targets.max())}]")
    shifts = torch.arange(bits - 1, -1, -1, device=targets.device)
    return ((targets.unsqueeze(-1) >> shifts) & 1).to(dtype)


def outlier_positions(steps: int, *, period: int = OUTLIER_PERIOD) -> list[int]:
    """0-based sample indices that carry the outlier target ``65535``: ``period, 2 period, ... < steps``."""
    return list(range(period, steps, period))


def make_targets(steps: int, generator: torch.Generator) -> Tensor:
    """One seed's target sequence: uniform integers in ``0..1023`` with outliers at :func:`outlier_positions`.

    Args:
        steps: Number of samples.
        generator: Source of randomness (advanced by ``steps`` draws).

    Returns:
        ``[steps]`` int64 tensor.
    """
    targets = torch.randint(0, MAX_TARGET + 1, (steps,), generator=generator)
    targets[outlier_positions(steps)] = OUTLIER_TARGET
    return targets


def init_params(
    generator: torch.Generator, *, dtype: torch.dtype = torch.float32, head_init: str = "default"
) -> Params:
    """One seed's network ``16 -> 4 x tanh(10) -> 1`` with PyTorch's default ``nn.Linear`` init.

    Each layer draws its weight (``kaiming_uniform_(a=sqrt(5))``) then its bias (``U(+-1/sqrt(fan_in))``)
    from ``generator``, exactly as ``nn.Linear.reset_parameters`` does from the global generator. With
    ``head_init="ones"`` the output layer is then set to ``weight = 1, bias = 0`` (its random draws are still
    made, so the body and everything drawn later from ``generator`` are the same for both inits).

    Args:
        generator: Source of randomness.
        dtype: Parameter dtype.
        head_init: ``"default"`` or ``"ones"`` (see :data:`HEAD_INITS`).

    Returns:
        ``[W1, b1, ..., W4, b4, W_head, b_head]`` with ``W_l`` of shape ``[out, in]``, ``b_l`` of shape
        ``[out]``, the head as ``W_head [1, 10]`` and ``b_head [1]``.
    """
    check_choice("head_init", head_init, HEAD_INITS)
    params: Params = []
    sizes = (BITS, *HIDDEN, 1)
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = torch.empty(fan_out, fan_in, dtype=dtype)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(fan_in)
        b = torch.nn.init.uniform_(torch.empty(fan_out, dtype=dtype), -bound, bound, generator=generator)
        params += [w, b]
    if head_init == "ones":
        params[-2], params[-1] = torch.ones_like(params[-2]), torch.zeros_like(params[-1])
    return params


# ------------------------------------------------------------------------------------------------- training


def _forward(params: Params, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Batched forward pass: ``x [S, 16]`` -> normalized output ``n [S]`` and activations (input first)."""
    acts = [x]
    for w, b in zip(params[0:-2:2], params[1:-2:2], strict=True):
        acts.append(torch.tanh(torch.baddbmm(b.unsqueeze(-1), w, acts[-1].unsqueeze(-1)).squeeze(-1)))
    return _head(params[-2], params[-1], acts[-1]), acts


def _head(weight: Tensor, bias: Tensor, h: Tensor) -> Tensor:
    """``n = W h + b`` per seed for ``weight [S, 10]``, ``bias [S]``, ``h [S, 10]``."""
    return (weight * h).sum(-1) + bias


def _sgd_step(params: Params, acts: list[Tensor], delta: Tensor, lr: float) -> Params:
    r"""SGD on ``½ δ²`` per seed with ``δ = n(x) − ŷ`` (``delta [S]``), by hand-written backpropagation.

    With ``h_l = tanh(W_l h_{l-1} + b_l)`` and ``g_l = ∂L/∂h_l``: ``∂L/∂z_l = g_l ⊙ (1 − h_l²)``,
    ``∂L/∂W_l = ∂L/∂z_l h_{l-1}ᵀ``, ``∂L/∂b_l = ∂L/∂z_l``, ``g_{l-1} = W_lᵀ ∂L/∂z_l``; the head gives
    ``∂L/∂W = δ h_Lᵀ``, ``∂L/∂b = δ`` and ``g_L = δ W``. Returns ``θ − α ∇θ`` for every parameter.
    """
    w_head = params[-2]
    d = delta.unsqueeze(-1)
    grads = [d * acts[-1], delta]
    g = d * w_head
    n_layers = len(params) // 2 - 1
    for layer in range(n_layers - 1, -1, -1):
        w = params[2 * layer]
        gz = g * (1 - acts[layer + 1] ** 2)
        grads = [gz.unsqueeze(-1) * acts[layer].unsqueeze(-2), gz, *grads]
        if layer:
            g = torch.bmm(gz.unsqueeze(-2), w).squeeze(-2)
    return [p - lr * gp for p, gp in zip(params, grads, strict=True)]


def simulate(spec: MethodSpec, params: Params, targets: Tensor, inputs: Tensor, *, record: str = "before") -> Tensor:
    r"""Train one method on all seeds at once, one sample per step.

    Per step ``t`` (seeds in parallel), with ``n = n(x_t)`` the current normalized output:

    * SGD: record ``(n − Y_t)²``, then one SGD step on ``½ (n − Y_t)²``.
    * ART/PopArt: ``new = art(state, Y_t, beta)``; for PopArt ``(W, b) = pop(W, b, state, new)`` and
      ``n' = n(x_t)`` with the rescaled head (for ART ``n' = n``). Record the squared test error
      ``(σ n + μ − Y_t)²`` with the old statistics (``record="before"``) or ``(σ' n' + μ' − Y_t)²`` with the
      new ones (``record="after"``); then one SGD step on ``½ (n' − (Y_t − μ')/σ')²``.

    With POP both records agree up to rounding (POP preserves ``f(x_t)``); for ART they differ by
    ``(σ' − σ) n + μ' − μ``.

    Args:
        spec: Method hyperparameters.
        params: Batched initial parameters (``[S, ...]``, see :func:`init_params`; the head as
            ``W [S, 10]``, ``b [S]``). Not modified.
        targets: ``[steps, S]`` float targets.
        inputs: ``[steps, S, 16]`` binary codes of the targets.
        record: ``"before"`` or ``"after"`` (see :data:`RECORD_CHOICES`).

    Returns:
        ``[S, steps]`` squared test errors (dtype of ``targets``).
    """
    check_choice("record", record, RECORD_CHOICES)
    state = popart.init(targets.shape[1], like=targets)
    errors = []
    with torch.no_grad():
        for y, x in zip(targets, inputs, strict=True):
            n, acts = _forward(params, x)
            if spec.beta is None:
                errors.append((n - y) ** 2)
                params = _sgd_step(params, acts, n - y, spec.lr)
                continue
            new = popart.art(state, y, spec.beta)
            n_new = n
            if spec.pop:
                params = [*params[:-2], *popart.pop(params[-2], params[-1], state, new)]
                n_new = _head(params[-2], params[-1], acts[-1])
            pred = popart.unnormalize(new, n_new) if record == "after" else popart.unnormalize(state, n)
            errors.append((pred - y) ** 2)
            state = new
            params = _sgd_step(params, acts, n_new - popart.normalize(new, y), spec.lr)
    return torch.stack(errors, dim=1)


def moving_average(x: Tensor, window: int) -> Tensor:
    """Trailing moving average along the last dim; the first ``window - 1`` entries average what exists.

    Args:
        x: ``[..., T]`` values.
        window: Window width (>= 1).

    Returns:
        ``[..., T]`` averages (float64).
    """
    _check_int("window", window, 1)
    c = torch.cumsum(x.to(torch.float64), dim=-1)
    lagged = torch.cat([torch.zeros_like(c[..., :window]), c[..., :-window]], dim=-1)[..., : c.shape[-1]]
    counts = torch.arange(1, c.shape[-1] + 1, dtype=torch.float64).clamp(max=window)
    return (c - lagged) / counts


# ---------------------------------------------------------------------------------------------------- results


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


def resolve_protocol(
    protocol: str | Protocol = "paper",
    *,
    art_lr: float | None = None,
    record: str | None = None,
    head_init: str | None = None,
) -> tuple[str, Protocol]:
    """A protocol by name (or as given) with optional overrides of single choices, validated.

    Args:
        protocol: A name from :data:`PROTOCOLS` or a :class:`Protocol`.
        art_lr: Override of the protocol's ART learning rate.
        record: Override of the protocol's ``record`` choice.
        head_init: Override of the protocol's ``head_init`` choice.

    Returns:
        ``(name, protocol)``: the name is the matching entry of :data:`PROTOCOLS`, else ``"custom"``.
    """
    if isinstance(protocol, Protocol):
        base = protocol
    else:
        base = PROTOCOLS[check_choice("protocol", protocol, tuple(PROTOCOLS))]
    if art_lr is not None:
        check_positive("art_lr", art_lr)
        base = base._replace(art_lr=float(art_lr))
    if record is not None:
        base = base._replace(record=record)
    if head_init is not None:
        base = base._replace(head_init=head_init)
    check_choice("record", base.record, RECORD_CHOICES)
    check_choice("head_init", base.head_init, HEAD_INITS)
    check_positive("art_lr", base.art_lr)
    name = next((k for k, v in PROTOCOLS.items() if v == base), "custom")
    return name, base


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
        log: Optional callback for one progress line per method.

    Returns:
        The :class:`Results`.

    Raises:
        ValueError, TypeError: On invalid arguments, before any work.
    """
    _check_int("seeds", seeds, 1)
    _check_int("steps", steps, 1)
    _check_int("seed", seed, 0)
    _check_int("window", window, 1)
    names = _parse_methods(methods)
    torch_dtype = _parse_dtype(dtype)
    protocol_name, proto = resolve_protocol(protocol, art_lr=art_lr, record=record, head_init=head_init)
    specs = {m: DEFAULT_METHODS[m] for m in names}
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

    squared, curves, wall = {}, {}, {}
    for name, spec in specs.items():
        start = time.perf_counter()
        sq = simulate(spec, params, targets, inputs, record=proto.record).to(torch.float64)
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
    )


# ---------------------------------------------------------------------------------------------------- outputs


def format_table(results: Results) -> str:
    """Plain-text table of the final smoothed RMSE per method (median and 10-90 percentiles over seeds)."""
    proto = results.protocol
    lines = [
        f"final RMSE at sample {results.steps - 1} (window {results.window}, {results.seeds} seeds, {results.dtype}, "
        f"protocol {results.protocol_name}: record {proto.record} ART, head init {proto.head_init}):",
        f"{'method':<8} {'lr':>9} {'beta':>9} {'median':>10} {'p10':>10} {'p90':>10} {'time s':>8}",
    ]
    for m, spec in results.specs.items():
        f = results.final(m)
        beta = "-" if spec.beta is None else f"{spec.beta:.3g}"
        lines.append(
            f"{m:<8} {spec.lr:>9.3g} {beta:>9} {f['median']:>10.2f} {f['p10']:>10.2f} {f['p90']:>10.2f} "
            f"{results.wall_time_s.get(m, float('nan')):>8.1f}"
        )
    return "\n".join(lines)


def _summary(results: Results) -> dict:
    return {
        "seeds": results.seeds,
        "steps": results.steps,
        "seed": results.seed,
        "window": results.window,
        "dtype": results.dtype,
        "protocol": {"name": results.protocol_name, **results.protocol._asdict()},
        "outliers": results.outliers,
        "torch": torch.__version__,
        "methods": {
            m: {**spec._asdict(), "final_rmse": results.final(m), "wall_time_s": results.wall_time_s.get(m)}
            for m, spec in results.specs.items()
        },
        "wall_time_s": sum(results.wall_time_s.values()),
    }


def _atomic_write(path: Path, write: Callable[[io.IOBase], None], *, binary: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plot(results: Results, f: io.IOBase) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = torch.arange(results.steps).numpy()
    colors = {"sgd": "tab:blue", "art": "tab:green", "popart": "tab:red"}
    for m, spec in results.specs.items():
        q = results.quantiles(m)
        label = f"{m} (lr={spec.lr:.2g}" + ("" if spec.beta is None else f", β={spec.beta:.2g}") + ")"
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
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=120)


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
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "curves.csv", "json": out / "summary.json"}

    def write_csv(f: io.IOBase) -> None:
        writer = csv.writer(f)
        writer.writerow(["step", "method", "median", "p10", "p90"])
        for m in results.methods:
            q = {k: v.tolist() for k, v in results.quantiles(m).items()}
            writer.writerows(
                (t, m, f"{q['median'][t]:.6g}", f"{q['p10'][t]:.6g}", f"{q['p90'][t]:.6g}")
                for t in range(results.steps)
            )

    _atomic_write(paths["csv"], write_csv)
    _atomic_write(paths["json"], lambda f: json.dump(_summary(results), f, indent=2))
    if plot:
        paths["png"] = out / "fig1a.png"
        _atomic_write(paths["png"], lambda f: _plot(results, f), binary=True)
    return paths


# -------------------------------------------------------------------------------------------------------- CLI


def _arg_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """Wrap a parser so argparse reports its ``ValueError``/``TypeError`` as a usage error (exit code 2)."""

    def checked(text: str) -> object:
        try:
            return parse(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return checked


def _int_at_least(name: str, minimum: int) -> Callable[[str], object]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {text!r}") from None
        return _check_int(name, value, minimum)

    return _arg_type(parse)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"art_lr must be a positive finite number, got {text!r}") from None
    check_positive("art_lr", value)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``popart-regression`` options to ``parser``."""
    parser.add_argument("--seeds", type=_int_at_least("seeds", 1), default=50, help="number of seeds, run vectorized")
    parser.add_argument("--steps", type=_int_at_least("steps", 1), default=5000, help="samples per run")
    parser.add_argument(
        "--methods",
        type=_arg_type(_parse_methods),
        default="sgd,art,popart",
        help=f"comma-separated methods from {','.join(DEFAULT_METHODS)}",
    )
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="paper",
        help="paper: record the test error before ART sees the sample, nn.Linear head init, ART lr 10^-2.5; "
        "reproduction: the seed reproduction's choices (record after ART/POP, head weight 1 and bias 0, "
        "ART lr 10^-3.5)",
    )
    parser.add_argument(
        "--art-lr",
        type=_arg_type(_positive_float),
        default=None,
        help="override the protocol's ART learning rate",
    )
    parser.add_argument(
        "--record", choices=RECORD_CHOICES, default=None, help="override the protocol's recording order"
    )
    parser.add_argument(
        "--head-init", choices=HEAD_INITS, default=None, help="override the protocol's output-layer init"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="simulation dtype")
    parser.add_argument("--seed", type=_int_at_least("seed", 0), default=0, help="base seed (seed i uses seed + i)")
    parser.add_argument(
        "--window", type=_int_at_least("window", 1), default=10, help="moving-average width of the RMSE"
    )
    parser.add_argument("--out", default="runs/popart_regression", help="output folder")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")


def run(args: argparse.Namespace) -> int:
    """Run the experiment from parsed arguments, write the outputs and print the final-RMSE table."""
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:  # pragma: no cover - matplotlib is a dev dependency
            raise SystemExit(f"popart-regression: the plot needs matplotlib ({e}); install it or pass --no-plot") from e
    start = time.perf_counter()
    results = run_experiment(
        args.seeds,
        args.steps,
        args.methods,
        protocol=args.protocol,
        art_lr=args.art_lr,
        record=args.record,
        head_init=args.head_init,
        dtype=args.dtype,
        seed=args.seed,
        window=args.window,
        log=print,
    )
    paths = write_outputs(results, args.out, plot=not args.no_plot)
    print(format_table(results))
    if {"sgd", "popart"} <= set(results.methods):
        ratio = results.final("sgd")["median"] / results.final("popart")["median"]
        print(f"SGD / PopArt final median RMSE: {ratio:.1f}x")
    print(f"total time {time.perf_counter() - start:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return 0
