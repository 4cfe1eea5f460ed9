r"""Fig. 1a with PopArt's ``beta`` and ``lr`` learned online (:class:`metaopt.online.OnlineMetaLearner`).

Every seed is one learner with its own ``lr`` and ``beta``; all seeds run as one vectorized population
(``vmap`` over seeds, the ``func`` engine). Per sample ``t``: the test error of ``x_t`` is recorded with the
current weights and statistics (before ART sees ``Y_t``; with POP the error after ART is the same); then
:meth:`~metaopt.online.OnlineMetaLearner.step` — every ``truncation`` samples a meta-step on this sample (not
yet trained on), then ART, POP and one SGD step on it, exactly the updates of the fixed-``beta`` PopArt run.

**Meta-objective** (per seed, on the next sample): the error in real units over a stop-gradient scale,
Huber-robust (:func:`metaopt.online.scaled_error`):
:math:`\ell = \mathrm{huber}_\delta\big((\sigma\, n(x) + \mu - Y) / \mathrm{sg}(s)\big)` with ``s = sigma``
(``meta_scale="sigma"``) or ``s`` a running RMS of the seed's recorded errors,
:math:`s_t^2 = (1-\rho) s_{t-1}^2 + \rho e_t^2`, :math:`\rho = 0.01`, taken before the evaluated sample's
error enters (``meta_scale="rms"``; not a function of ``beta`` for the gradient). Adam on ``log lr`` and
``logit beta`` (elementwise: the seeds do not interact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt._validation import check_bool, check_choice, check_int, check_positive, check_real
from metaopt.engines import InnerLoop, PopArtSpec
from metaopt.experiments.popart_regression._protocols import BITS, HIDDEN
from metaopt.meta_params import MetaParameters
from metaopt.online import MODES, REATTACH, OnlineMetaLearner, scaled_error

__all__ = ["LEARNABLE", "META_SCALES", "OnlineSpec", "check_online", "simulate_online"]

#: What ``--learn`` may name.
LEARNABLE = ("beta", "lr")

#: Scales of the meta-objective's error (see the module docstring).
META_SCALES = ("sigma", "rms")
#: Step of the running RMS scale.
RMS_STEP = 0.01


class OnlineSpec(NamedTuple):
    """How PopArt's hyperparameters are learned online.

    Attributes:
        learn: Which of ``"beta"``, ``"lr"`` are learned (the others stay at their initial values).
        truncation: Window ``k``: a meta-step every ``k`` samples through the last ``k`` updates.
        meta_lr: Adam's step size on ``log lr`` and ``logit beta``.
        meta_scale: ``"sigma"`` or ``"rms"``.
        huber: Huber threshold of the scaled error (``None``: squared error).
        carry: Carry the statistics' whole-lifetime sensitivity to ``beta``.
        reattach: ``"pop"`` or ``"normalized"`` (:data:`metaopt.online.REATTACH`).
        mode: ``"truncated"`` or ``"forward"`` (:data:`metaopt.online.MODES`; forward: the exact whole-lifetime
            meta-gradient).
    """

    learn: tuple[str, ...]
    truncation: int = 10
    meta_lr: float = 3e-2
    meta_scale: str = "sigma"
    huber: float | None = 1.0
    carry: bool = True
    reattach: str = "pop"
    mode: str = "truncated"


def check_online(
    *,
    learn: str | Sequence[str],
    truncation: int,
    meta_lr: float,
    meta_scale: str,
    huber: float | None,
    carry: bool,
    reattach: str,
    mode: str = "truncated",
    names: Mapping[str, str] | None = None,
) -> OnlineSpec | None:
    """Validate the online-learning arguments; ``None`` when nothing is learned (the fixed-value PopArt run)."""
    names = names or {}

    def n(arg: str) -> str:
        return names.get(arg, arg)

    items = [x.strip() for x in learn.split(",") if x.strip()] if isinstance(learn, str) else list(learn)
    bad = [x for x in items if x not in LEARNABLE]
    if bad or len(set(items)) != len(items):
        raise ValueError(f"{n('learn')} must name distinct items of {LEARNABLE}, got {learn!r}")
    check_int(n("truncation"), truncation, low=1)
    check_real(n("meta_lr"), meta_lr, low=0.0)
    check_choice(n("meta_scale"), meta_scale, META_SCALES)
    if huber is not None:
        check_positive(n("huber"), huber)
    check_bool(n("carry"), carry)
    check_choice(n("reattach"), reattach, REATTACH)
    check_choice(n("mode"), mode, MODES)
    if not items:
        return None
    return OnlineSpec(tuple(sorted(items)), truncation, float(meta_lr), meta_scale, huber, carry, reattach, mode)


def _network(dtype: torch.dtype) -> nn.Sequential:
    sizes = (BITS, *HIDDEN)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(HIDDEN[-1], 1))
    return nn.Sequential(*layers).to(dtype)


def simulate_online(
    lr: float, beta: float, online: OnlineSpec, params: list[Tensor], targets: Tensor, inputs: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Train PopArt on all seeds at once, learning ``lr`` and/or ``beta`` online.

    Args:
        lr: Initial (or fixed) SGD step size.
        beta: Initial (or fixed) ART step size.
        online: What is learned and how.
        params: Batched initial parameters (``[S, ...]``, head ``W [S, 10]``, ``b [S]``; see
            :func:`~metaopt.experiments.popart_regression.init_params`). Not modified.
        targets: ``[steps, S]`` float targets.
        inputs: ``[steps, S, 16]`` binary codes.

    Returns:
        ``(squared_errors, lrs, betas)``, each ``[S, steps]``: the recorded squared test errors, and the ``lr``
        and ``beta`` each update used.
    """
    dtype, seeds = targets.dtype, targets.shape[1]
    model = _network(dtype)
    names = [n for n, _ in model.named_parameters()]
    stacked = list(params)
    stacked[-2], stacked[-1] = stacked[-2].reshape(seeds, 1, -1), stacked[-1].reshape(seeds, 1)
    start = {n: p.detach().clone() for n, p in zip(names, stacked, strict=True)}
    head_w, head_b = names[-2], names[-1]

    def predict(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x,))  # [1], normalized

    def inner_loss(p: dict[str, Tensor], batch: Any, s: pa.PopArtState | None) -> Tensor:
        assert s is not None
        return 0.5 * ((predict(p, batch[0]) - pa.normalize(s, batch[1].reshape(1))) ** 2).sum()

    def meta_loss(p: dict[str, Tensor], batch: Any, s: pa.PopArtState | None) -> Tensor:
        assert s is not None
        scale = s.sigma if online.meta_scale == "sigma" else batch[2]
        pred = pa.unnormalize(s, predict(p, batch[0]))
        return scaled_error(pred, batch[1].reshape(1), scale, huber=online.huber).sum()

    spec = PopArtSpec(head_w, head_b, targets=lambda p, batch, s: batch[1].reshape(1), debias=False,
                      first_pop=True)
    meta = MetaParameters(lr=lr, beta=beta, learn=online.learn, dtype=dtype)
    state = pa.PopArtState(*(t.reshape(seeds, 1) for t in pa.init(seeds, dtype=dtype)))
    learner = OnlineMetaLearner(model, InnerLoop(inner_loss, steps=online.truncation, popart=spec), meta, meta_loss,
                                popart_state=state, params=start, learners=seeds, carry=online.carry,
                                reattach=online.reattach, mode=online.mode, meta_lr=online.meta_lr)
    errors, lrs, betas = [], [], []
    rms2 = None
    with learner:
        for y, x in zip(targets, inputs, strict=True):
            with torch.no_grad():
                p, s = learner.current()
                assert s is not None
                n = torch.func.vmap(predict)(p, x).reshape(seeds)
                pred = s.sigma.reshape(seeds) * n + s.mu.reshape(seeds)
                e2 = (pred - y) ** 2
            errors.append(e2)
            scale = (e2 if rms2 is None else rms2).sqrt().clamp(min=1e-6).reshape(seeds, 1)  # before e_t enters
            rms2 = e2 if rms2 is None else (1 - RMS_STEP) * rms2 + RMS_STEP * e2
            info = learner.step((x, y, scale))
            lrs.append(info.lr)
            betas.append(info.beta)
    return torch.stack(errors, 1), torch.stack(lrs, 1), torch.stack(betas, 1)
