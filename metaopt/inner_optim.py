"""Functional, differentiable inner-loop optimizers (SGD with momentum, Adam).

Pure functions over a typed NamedTuple state, usable inside ``torch.func.vmap``/``grad``. The update
rules match ``torch.optim.SGD`` (first momentum buffer = the gradient) and TorchOpt's Adam
(``eps`` added after the square root), so the ``func`` engine computes the same inner steps as the
``higher`` and ``torchopt`` engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["InnerOptimizer", "InnerOptState", "init_state", "update", "safe_sqrt"]

Params = dict[str, Tensor]
LR = Tensor | float | Mapping[str, Tensor | float]


class InnerOptimizer(NamedTuple):
    """Hyperparameters of an inner optimizer that are not meta-learned.

    Attributes:
        kind: ``"sgd"`` or ``"adam"``.
        momentum: SGD momentum ``m`` (0 disables the buffer).
        betas: Adam's ``(b1, b2)``.
        eps: Adam's ``eps`` (added after the square root).
        eps_root: Adam's ``eps_root`` (added inside the square root, TorchOpt's convention).
    """

    kind: str = "sgd"
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eps_root: float = 0.0

    def validate(self) -> InnerOptimizer:
        """Check the hyperparameters, raising one clear error per bad value."""
        if self.kind not in ("sgd", "adam"):
            raise ValueError(f"optimizer kind must be 'sgd' or 'adam', got {self.kind!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if self.eps < 0 or self.eps_root < 0:
            raise ValueError(f"eps and eps_root must be >= 0, got eps={self.eps}, eps_root={self.eps_root}")
        return self


class InnerOptState(NamedTuple):
    """State of a functional inner optimizer.

    Attributes:
        step: Number of updates taken (a Python int, so it is static under ``vmap``).
        mu: First-moment / momentum buffers per parameter (empty before the first step).
        nu: Adam's second-moment buffers per parameter.
    """

    step: int
    mu: Params
    nu: Params


def init_state() -> InnerOptState:
    """An empty optimizer state (buffers are created at the first step, as in ``torch.optim``)."""
    return InnerOptState(0, {}, {})


def safe_sqrt(x: Tensor) -> Tensor:
    r"""``sqrt(x)`` whose derivative is 0 (not ``inf``/NaN) where ``x == 0``.

    .. math:: \operatorname{safe\_sqrt}(x) = \sqrt{x} \text{ for } x > 0, \; 0 \text{ otherwise}.
    """
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def _lr_for(lr: LR, name: str) -> Tensor | float:
    return lr[name] if isinstance(lr, Mapping) else lr


def update(
    params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: InnerOptState, lr: LR, opt: InnerOptimizer
) -> tuple[Params, InnerOptState]:
    r"""One differentiable optimizer step, out of place.

    SGD: :math:`m_t = \mu m_{t-1} + g_t` (:math:`m_1 = g_1`), :math:`\theta_{t} = \theta_{t-1} - \eta m_t`.

    Adam: :math:`m_t = b_1 m + (1-b_1) g`, :math:`v_t = b_2 v + (1-b_2) g^2`,
    :math:`\theta_t = \theta_{t-1} - \eta \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)` with
    bias-corrected :math:`\hat m, \hat v`. The square root has a zero derivative at 0, so meta-gradients
    stay finite when a gradient is exactly zero.

    Args:
        params: Current parameters by name.
        grads: Gradients by name (same keys).
        state: Optimizer state.
        lr: Learning rate: a scalar (float or tensor, may require grad) or a mapping name -> scalar
            (Meta-SGD style per-parameter rates).
        opt: Non-learned hyperparameters.

    Returns:
        ``(new_params, new_state)``.
    """
    step = state.step + 1
    new_params: Params = {}
    mu: Params = {}
    nu: Params = {}
    for name, p in params.items():
        g = grads[name]
        eta = _lr_for(lr, name)
        if opt.kind == "sgd":
            if opt.momentum:
                g = g if state.step == 0 else opt.momentum * state.mu[name] + g
                mu[name] = g
            new_params[name] = p - eta * g
        else:
            b1, b2 = opt.betas
            m_prev = state.mu.get(name, torch.zeros_like(g))
            v_prev = state.nu.get(name, torch.zeros_like(g))
            m = b1 * m_prev + (1 - b1) * g
            v = b2 * v_prev + (1 - b2) * g * g
            mu[name], nu[name] = m, v
            m_hat = m / (1 - b1**step)
            v_hat = v / (1 - b2**step)
            new_params[name] = p - eta * m_hat / (safe_sqrt(v_hat + opt.eps_root) + opt.eps)
    return new_params, InnerOptState(step, mu, nu)
