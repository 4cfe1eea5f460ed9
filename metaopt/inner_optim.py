r"""Functional, differentiable inner-loop optimizers: SGD (with momentum) and Adam.

An optimizer is described by a validated, immutable :class:`InnerOptimizer`, built with the factories
:func:`sgd` and :func:`adam`. :func:`update` maps gradients to *updates* :math:`u = -\eta\, d` (``d`` the
optimizer's direction), out of place, so that ``theta + u`` is the next iterate. It is the one
implementation of the optimizer math that every meta-gradient engine uses (``func``, ``higher`` and
TorchOpt only differentiate and apply it), so the three engines take bit-identical inner steps.

Example:
    >>> import torch
    >>> from metaopt import inner_optim
    >>> opt = inner_optim.sgd(momentum=0.9)
    >>> p, g = {"w": torch.tensor([1.0])}, {"w": torch.tensor([0.5])}
    >>> u, state = inner_optim.update(g, inner_optim.init_state(), 0, {"w": torch.tensor(0.1)}, opt)
    >>> u["w"]
    tensor([-0.0500])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from metaopt._validation import check_choice, check_real

__all__ = ["KINDS", "InnerOptimizer", "InnerOptState", "sgd", "adam", "init_state", "update", "safe_sqrt"]

#: Inner optimizer kinds (:class:`InnerOptimizer`'s ``kind``).
KINDS = ("sgd", "adam")
Params = dict[str, Tensor]


@dataclass(frozen=True)
class InnerOptimizer:
    """Non-learned hyperparameters of an inner optimizer, validated at construction.

    Prefer the factories :func:`sgd` and :func:`adam`, which only accept their own hyperparameters.

    Attributes:
        kind: ``"sgd"`` or ``"adam"``.
        momentum: SGD momentum ``m`` in ``[0, 1)`` (0 disables the buffer).
        betas: Adam's ``(b1, b2)``, each in ``[0, 1)``.
        eps: Adam's ``eps`` (>= 0, added after the square root).
        eps_root: Adam's ``eps_root`` (>= 0, added inside the square root).
    """

    kind: str = "sgd"
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eps_root: float = 0.0

    def __post_init__(self) -> None:
        check_choice("optimizer kind", self.kind, KINDS)
        check_real("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        if not isinstance(self.betas, tuple | list) or len(self.betas) != 2:
            raise ValueError(f"betas must be a pair (b1, b2) in [0, 1), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            check_real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))
        check_real("eps", self.eps, low=0.0)
        check_real("eps_root", self.eps_root, low=0.0)
        if self.kind == "sgd" and (self.betas, self.eps, self.eps_root) != ((0.9, 0.999), 1e-8, 0.0):
            raise ValueError("betas, eps and eps_root are Adam's hyperparameters; with kind='sgd' leave them at "
                             f"their defaults, got betas={self.betas}, eps={self.eps}, eps_root={self.eps_root}")
        if self.kind == "adam" and self.momentum:
            raise ValueError(f"momentum is SGD's hyperparameter (Adam uses betas); with kind='adam' expected 0, "
                             f"got {self.momentum}")


def sgd(momentum: float = 0.0) -> InnerOptimizer:
    r"""SGD, optionally with (heavy-ball) momentum, as ``torch.optim.SGD``.

    .. math:: m_1 = g_1, \quad m_t = \mu\, m_{t-1} + g_t, \quad u_t = -\eta\, m_t

    (without momentum :math:`u_t = -\eta g_t`).

    Args:
        momentum: :math:`\mu \in [0, 1)`.
    """
    return InnerOptimizer("sgd", momentum=momentum)


def adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, eps_root: float = 0.0) -> InnerOptimizer:
    r"""Adam with ``eps`` after the square root of the bias-corrected second moment (``torch.optim.Adam``).

    .. math::
        m_t = b_1 m_{t-1} + (1-b_1) g_t, \quad v_t = b_2 v_{t-1} + (1-b_2) g_t^2, \quad
        u_t = -\eta\, \frac{m_t / (1-b_1^t)}{\sqrt{v_t/(1-b_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        betas: :math:`(b_1, b_2)`, each in ``[0, 1)``.
        eps: :math:`\epsilon \ge 0`.
        eps_root: :math:`\epsilon_{root} \ge 0`.
    """
    return InnerOptimizer("adam", betas=tuple(betas), eps=eps, eps_root=eps_root)  # type: ignore[arg-type]


class InnerOptState(NamedTuple):
    """Buffers of a functional inner optimizer (all tensors, so the state can be ``vmap``-ed over tasks).

    Attributes:
        mu: SGD's momentum buffer or Adam's first moment, per parameter (empty before the first step).
        nu: Adam's second moment per parameter.
    """

    mu: Params
    nu: Params


def init_state() -> InnerOptState:
    """An empty optimizer state (buffers are created at the first step, as in ``torch.optim``)."""
    return InnerOptState({}, {})


def safe_sqrt(x: Tensor) -> Tensor:
    r"""``sqrt(x)`` whose derivative is 0 (not ``inf``/NaN) where ``x == 0``.

    .. math:: \operatorname{safe\_sqrt}(x) = \sqrt{x} \text{ for } x > 0, \; 0 \text{ otherwise}.
    """
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def update(
    grads: Mapping[str, Tensor], state: InnerOptState, step: int, lr: Mapping[str, Tensor | float],
    opt: InnerOptimizer,
) -> tuple[Params, InnerOptState]:
    r"""One differentiable optimizer step: the updates :math:`u` (add them to the parameters) and the new state.

    See :func:`sgd` and :func:`adam` for the rules. Adam's square root has a zero derivative at 0, so
    meta-gradients stay finite where a gradient is exactly zero.

    Args:
        grads: Gradients by parameter name.
        state: Buffers after ``step`` updates.
        step: Number of updates taken before this one (0 at the first step).
        lr: Learning rate per parameter name (a float or a 0-dim tensor that may require grad).
        opt: Non-learned hyperparameters.

    Returns:
        ``(updates, new_state)`` with ``updates[name] = -lr[name] * direction[name]``.
    """
    updates: Params = {}
    mu: Params = {}
    nu: Params = {}
    for name, g in grads.items():
        eta = lr[name]
        if opt.kind == "sgd":
            if opt.momentum:
                g = g if step == 0 else opt.momentum * state.mu[name] + g
                mu[name] = g
            updates[name] = -eta * g
        else:
            b1, b2 = opt.betas
            m = (1 - b1) * g if step == 0 else b1 * state.mu[name] + (1 - b1) * g
            v = (1 - b2) * g * g if step == 0 else b2 * state.nu[name] + (1 - b2) * g * g
            mu[name], nu[name] = m, v
            t = step + 1
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            updates[name] = -eta * (m_hat / (safe_sqrt(v_hat + opt.eps_root) + opt.eps))
    return updates, InnerOptState(mu, nu)
