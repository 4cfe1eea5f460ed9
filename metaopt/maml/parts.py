r"""The pieces of :class:`~metaopt.maml.MetaLearner`'s step that a hand-written MAML-A2C loop can call.

* :func:`routed_meta_gradient` -- ``theta_0`` follows the total outer loss, a learned ``lr``/``beta`` the terms
  its objective names (one ``autograd.grad`` per distinct objective);
* :func:`metaopt.popart.init_tasks` -- fresh per-task PopArt statistics ``[tasks, 1]``;
* :func:`metaopt.rl.returns_targets` -- ART's targets (Monte-Carlo returns while a task's statistics are fresh);
* :func:`metaopt.rl.outer_a2c_terms` -- the outer policy and value terms, the value error in
  :math:`\operatorname{sg}(\sigma)` units.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from metaopt._validation import check_choice
from metaopt.maml.config import OBJECTIVES
from metaopt.meta_params import MetaParameters

__all__ = ["meta_parameter_role", "routed_meta_gradient", "gradient_signal"]


def meta_parameter_role(name: str) -> str:
    """``"lr"``, ``"beta"`` or ``"other"`` for a name of :meth:`MetaParameters.named_parameters`."""
    if name.startswith("log_lr"):
        return "lr"
    return "beta" if name == "logit_beta" else "other"


def routed_meta_gradient(objectives: Mapping[str, Tensor], theta: Sequence[Tensor], meta: MetaParameters, *,
                         lr_objective: str = "policy", beta_objective: str = "policy"
                         ) -> tuple[list[Tensor], list[Tensor]]:
    r"""Gradients of ``theta`` for the total objective and of each learned meta-parameter for its own objective.

    .. math::
        g_\theta = \nabla_\theta L_\text{total}, \qquad g_{\log\alpha} = \nabla_{\log\alpha} L_{o_\alpha},
        \qquad g_{\operatorname{logit}\beta} = \nabla_{\operatorname{logit}\beta} L_{o_\beta},

    with :math:`o_\alpha, o_\beta` = ``lr_objective``, ``beta_objective`` (``"policy"``, ``"value"`` or
    ``"total"``). Parameters an objective does not reach get zeros.

    Args:
        objectives: ``{"policy": ..., "value": ..., "total": ...}`` scalars (the weighted outer terms).
        theta: The model's parameters (``theta_0``).
        meta: The meta-parameters.
        lr_objective: The objective a learned lr follows.
        beta_objective: The objective a learned beta follows.

    Returns:
        ``(theta_grads, meta_grads)`` in the order of ``theta`` and ``meta.parameters()``.
    """
    check_choice("lr_objective", lr_objective, OBJECTIVES)
    check_choice("beta_objective", beta_objective, OBJECTIVES)
    missing = [o for o in OBJECTIVES if not isinstance(objectives.get(o), Tensor)]
    if missing:
        raise ValueError(f"objectives must map each of {OBJECTIVES} to a scalar tensor, missing {missing}")
    follow = {"lr": lr_objective, "beta": beta_objective, "other": "total"}
    params = [*theta, *(p for _, p in meta.named_parameters())]
    wanted = ["total"] * len(theta) + [follow[meta_parameter_role(n)] for n, _ in meta.named_parameters()]
    grads: list[Tensor | None] = [None] * len(params)
    order = sorted(set(wanted), key=lambda o: o == "total")  # "total" last: it may free the graph
    for j, obj in enumerate(order):
        idx = [i for i, w in enumerate(wanted) if w == obj]
        gs = torch.autograd.grad(objectives[obj], [params[i] for i in idx], allow_unused=True,
                                 retain_graph=j < len(order) - 1)
        for i, g in zip(idx, gs, strict=True):
            grads[i] = g
    out = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    return out[: len(theta)], out[len(theta):]


def gradient_signal(grads: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    r"""Is a meta-parameter's meta-gradient a steady signal or zero-mean noise, over a window of iterations?

    .. math::
        t = \frac{\bar g}{s_g / \sqrt{n}}, \qquad
        \text{ratio} = \frac{\operatorname{median}|g|}{\operatorname{median}|r|}

    ``t`` is the one-sample t-statistic of the per-iteration derivatives ``g`` (0 with fewer than two values or no
    spread; ``|t| >= 2`` is a steady sign), ``positive`` the fraction of positive ones, ``ratio`` their typical size
    against a reference meta-gradient ``r`` (e.g. ``d/dlog lr``; NaN when its median is 0) and ``zeros`` how many
    were exactly 0.

    Args:
        grads: Per-iteration derivatives (e.g. the metrics rows' ``grad_logit_beta``).
        reference: The reference derivatives of the same iterations (e.g. ``grad_log_lr``).

    Returns:
        ``{"t", "positive", "ratio", "zeros"}``.
    """
    g = [float(x) for x in grads]
    sd = statistics.stdev(g) if len(g) >= 2 else 0.0
    ref = [abs(float(x)) for x in reference]
    med_ref = statistics.median(ref) if ref else 0.0
    return {"t": statistics.fmean(g) / (sd / math.sqrt(len(g))) if sd else 0.0,
            "positive": sum(x > 0 for x in g) / max(1, len(g)),
            "ratio": statistics.median(abs(x) for x in g) / med_ref if g and med_ref else math.nan,
            "zeros": float(sum(x == 0.0 for x in g))}
