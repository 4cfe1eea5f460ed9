"""Catalogue check ``darts``: DARTS' one-step hypergradient against its FD-HVP approximation and plain FD.

See :mod:`metaopt.verify.catalogue` for what the check compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaopt.engines import InnerLoop, adapt
from metaopt.meta_params import MetaParameters
from metaopt.verify._rows import F64, CheckResult, _row
from metaopt.verify.core import check_gradients

__all__ = [
    "MixedOp",
    "DartsProblem",
    "make_darts_problem",
    "darts_val_loss",
    "darts_exact_hypergradient",
    "darts_fd_hypergradient",
    "check_darts",
]


class MixedOp(nn.Module):
    r"""A DARTS edge: :math:`\bar o(x) = \sum_i \operatorname{softmax}(\alpha)_i \, o_i(x; w)` over 4 candidates.

    Candidates on ``x`` of shape ``[n, d]`` (each returns ``[n]``): a linear map, a tanh MLP, a sine
    feature and a quadratic feature.
    """

    num_ops = 4

    def __init__(self, d: int = 2, hidden: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(d, 1)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.sine = nn.Linear(d, 1)
        self.quad = nn.Linear(d, 1, bias=False)

    def forward(self, x: Tensor, alpha: Tensor) -> Tensor:
        """Softmax(alpha)-weighted sum of the candidate outputs, shape ``[n]``."""
        ops = torch.stack([self.linear(x), self.mlp(x), torch.sin(self.sine(x)), self.quad(x**2)], -1)
        return (ops.squeeze(-2) * torch.softmax(alpha, -1)).sum(-1)


@dataclass
class DartsProblem:
    r"""A tiny bilevel regression: :math:`\min_\alpha L_{val}(w^*(\alpha), \alpha)`.

    Attributes:
        model: The mixed operation (weights ``w``).
        alpha: Architecture logits (leaf, requires grad).
        train: ``(x, y)`` training split.
        val: ``(x, y)`` validation split.
        xi: Inner step size :math:`\xi`.
    """

    model: MixedOp
    alpha: Tensor
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    xi: float

    def loss(self, params: dict[str, Tensor], split: tuple[Tensor, Tensor], alpha: Tensor) -> Tensor:
        """Mean squared error of the mixed op with weights ``params`` on ``split``."""
        x, y = split
        return ((functional_call(self.model, params, (x, alpha)) - y) ** 2).mean()


def make_darts_problem(seed: int = 0, n: int = 32, xi: float = 0.1) -> DartsProblem:
    """Random weights, logits and data for :class:`DartsProblem` (float64, own generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MixedOp().double()
    alpha = (0.5 * torch.randn(MixedOp.num_ops, generator=g, dtype=F64)).requires_grad_()

    def split() -> tuple[Tensor, Tensor]:
        x = torch.randn(n, 2, generator=g, dtype=F64)
        return x, torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.1 * torch.randn(n, generator=g, dtype=F64)

    return DartsProblem(model, alpha, split(), split(), xi)


def darts_val_loss(problem: DartsProblem, engine: str) -> Tensor:
    r"""The bilevel objective :math:`L_{val}(w - \xi \nabla_w L_{train}(w, \alpha), \alpha)`, inner step on ``engine``.

    The inner step uses the fixed rate :math:`\xi`; :math:`\alpha` enters the inner loss as data, so
    autograd differentiates through the inner gradient (the mixed second derivative).
    """
    inner = InnerLoop(lambda params, alpha, state: problem.loss(params, problem.train, alpha), steps=1)
    w1 = adapt(problem.model, inner, problem.alpha, MetaParameters(lr=problem.xi, dtype=F64), engine=engine).params
    return problem.loss(w1, problem.val, problem.alpha)


def darts_exact_hypergradient(problem: DartsProblem, engine: str) -> Tensor:
    r"""Exact one-step hypergradient :math:`\nabla_\alpha L_{val}(w', \alpha)` by autograd (see :func:`darts_val_loss`).

    Equals :math:`\nabla_\alpha L_{val}(w', \alpha) - \xi \nabla^2_{\alpha, w} L_{train}(w, \alpha)
    \nabla_{w'} L_{val}(w', \alpha)` with the partial gradients taken at fixed :math:`w'`.
    """
    return torch.autograd.grad(darts_val_loss(problem, engine), problem.alpha)[0]


def darts_fd_hypergradient(problem: DartsProblem, xi: float | None = None, scale: float = 0.01) -> Tensor:
    r"""DARTS' approximation (Liu et al. 2019, eq. 7–8) with plain autograd and no second derivatives.

    .. math::
        \nabla_\alpha L_{val}(w', \alpha) - \xi \frac{\nabla_\alpha L_{train}(w^+, \alpha)
        - \nabla_\alpha L_{train}(w^-, \alpha)}{2 \epsilon}, \quad
        w^\pm = w \pm \epsilon \nabla_{w'} L_{val}(w', \alpha), \quad
        \epsilon = \frac{0.01}{\|\nabla_{w'} L_{val}(w', \alpha)\|}

    with :math:`w' = w - \xi \nabla_w L_{train}(w, \alpha)`. ``xi=0`` is the first-order approximation
    :math:`\nabla_\alpha L_{val}(w, \alpha)`.

    Args:
        problem: The bilevel problem.
        xi: Inner step size (default: ``problem.xi``).
        scale: Numerator of :math:`\epsilon`.

    Returns:
        The approximate hypergradient, shape of ``alpha``.
    """
    xi = problem.xi if xi is None else xi
    alpha = problem.alpha.detach().requires_grad_()
    w = {n: p.detach().requires_grad_() for n, p in problem.model.named_parameters()}
    g_train = torch.autograd.grad(problem.loss(w, problem.train, alpha.detach()), list(w.values()))
    w1 = {n: (p - xi * g).detach().requires_grad_() for (n, p), g in zip(w.items(), g_train, strict=True)}
    d_alpha, *d_w1 = torch.autograd.grad(problem.loss(w1, problem.val, alpha), [alpha, *w1.values()])
    if xi == 0:
        return d_alpha
    eps = scale / float(torch.sqrt(torch.stack([(g**2).sum() for g in d_w1]).sum()))

    def grad_alpha_train(sign: float) -> Tensor:
        shifted = {n: p.detach() + sign * eps * v for (n, p), v in zip(w.items(), d_w1, strict=True)}
        return torch.autograd.grad(problem.loss(shifted, problem.train, alpha), alpha)[0]

    return d_alpha - xi * (grad_alpha_train(1.0) - grad_alpha_train(-1.0)) / (2 * eps)


def check_darts(engines: Sequence[str]) -> list[CheckResult]:
    r"""DARTS' one-step hypergradient on each engine against the FD-HVP approximation and plain FD.

    The finite-difference Hessian-vector product has an :math:`O(\epsilon^2)` error (about 1e-8 relative
    here), so that row is held to 1e-6. The first-order row (:math:`\xi = 0`) is informational: its error is
    the size of the second-order term DARTS keeps, expected to be large; it is reported with
    ``tolerance = inf`` and always passes.
    """
    name, rows = "darts", []
    problem = make_darts_problem()
    approx, first = darts_fd_hypergradient(problem), darts_fd_hypergradient(problem, xi=0.0)
    for engine in engines:
        exact = darts_exact_hypergradient(problem, engine)
        fd = check_gradients(lambda: darts_val_loss(problem, engine),  # noqa: B023
                             {"alpha": problem.alpha}, eps=1e-6)["alpha"].reference
        rows += [
            _row(name, engine, "dLval/dalpha vs DARTS FD-HVP", exact, approx, 1e-6,
                 "xi=0.1, eps=0.01/||grad_w' Lval||; L2 norms of the 4-vector"),
            _row(name, engine, "dLval/dalpha vs central FD", exact, fd, 1e-6, "FD of the bilevel objective"),
            _row(name, engine, "first-order (xi=0) vs exact", first, exact, math.inf,
                 "informational, not a pass/fail criterion: the dropped second-order term"),
        ]
    return rows
