"""A thin ``nn.Module`` over the functional PopArt: a linear layer with its statistics as buffers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaopt._validation import check_open_unit_interval
from metaopt.popart._art import art, sigma_at_bound
from metaopt.popart._pop import pop, unnormalize
from metaopt.popart._state import (
    DEFAULT_SIGMA_MAX,
    DEFAULT_SIGMA_MIN,
    PopArtState,
    _check_batch_rule,
    _check_bounds,
    init,
)

__all__ = ["PopArtHead"]


class PopArtHead(nn.Module):
    """A linear layer with PopArt statistics, for module-style code.

    ``forward`` returns normalized outputs ``n = W h + b``; :meth:`unnormalized` returns
    ``sigma * n + mu``. :meth:`update` runs ART on targets then POP on the layer, in place under
    ``torch.no_grad()`` (through ``copy_``, never ``.data``). For meta-gradients through the statistics use
    the functional API (:func:`art`, :func:`pop`) or :mod:`metaopt.engines`, which read the statistics
    from :attr:`state` and the layer's parameters by name (``linear.weight``, ``linear.bias``).

    **Why beta defaults to 3e-4.** That is Hessel et al. (2018)'s value for multi-task PopArt (IMPALA on
    Atari-57): one long, non-stationary stream of returns per head, where slowly moving statistics (time
    constant ``1/beta`` ≈ 3,300 updates) average over many batches and keep the normalization, and so the
    head's outputs after POP, steady. It suits a module that lives for a whole training run. Statistics that
    are re-initialized often and must settle within a few updates need a much larger step: the MAML job
    (:mod:`metaopt.maml`) re-initializes them for every task and adapts for a handful of inner steps, so
    :class:`~metaopt.meta_params.MetaParameters` and ``metaopt maml-rl`` start from ``beta = 0.1`` (time
    constant ≈ 10 updates) and can learn it.

    Args:
        in_features: Input size.
        num_outputs: Number of outputs, each with its own statistics.
        beta: ART step size in ``(0, 1)`` (see above for the default).
        debias: Debiased step size (see :func:`art`).
        sigma_min: Lower bound of ``sigma`` (see the module docstring).
        sigma_max: Upper bound of ``sigma``.
        batch_rule: How a batch of targets updates the statistics (see :func:`art`).
        dtype: Parameter dtype.
        device: Parameter device.

    Attributes:
        clipped_steps: ``[num_outputs]`` buffer (not saved in ``state_dict``): how many :meth:`update`
            calls left each output's ``sigma`` on a clip bound.
    """

    # Buffers registered in __init__ (declared so that type checkers see tensors, not ``Tensor | Module``).
    mu: Tensor
    sigma: Tensor
    count: Tensor
    clipped_steps: Tensor

    def __init__(
        self,
        in_features: int,
        num_outputs: int = 1,
        *,
        beta: float = 3e-4,
        debias: bool = False,
        sigma_min: float = DEFAULT_SIGMA_MIN,
        sigma_max: float = DEFAULT_SIGMA_MAX,
        batch_rule: str = "moments",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_open_unit_interval("beta", beta)
        _check_batch_rule(batch_rule, debias)
        s = init(num_outputs, dtype=dtype, device=device)  # validates num_outputs and dtype before nn.Linear
        _check_bounds(sigma_min, sigma_max, s.mu.dtype)
        self.beta, self.debias, self.sigma_min, self.sigma_max = beta, debias, sigma_min, sigma_max
        self.batch_rule = batch_rule
        self.linear = nn.Linear(in_features, num_outputs, dtype=s.mu.dtype, device=device)
        self.register_buffer("mu", s.mu)
        self.register_buffer("sigma", s.sigma)
        self.register_buffer("count", s.count)
        clipped = torch.zeros(num_outputs, dtype=torch.long, device=device)
        self.register_buffer("clipped_steps", clipped, persistent=False)

    @property
    def state(self) -> PopArtState:
        """The current statistics as a :class:`PopArtState`."""
        return PopArtState(self.mu, self.sigma, self.count)

    def forward(self, h: Tensor) -> Tensor:
        """Normalized outputs ``W h + b``, shape ``[..., num_outputs]``."""
        return self.linear(h)

    def unnormalized(self, h: Tensor) -> Tensor:
        """Unnormalized outputs ``sigma (W h + b) + mu``."""
        return unnormalize(self.state, self.linear(h))

    @torch.no_grad()
    def update(self, targets: Tensor, *, task_ids: Tensor | None = None) -> PopArtState:
        """ART on ``targets`` then POP on the layer, in place; returns the new statistics."""
        old = self.state
        new = art(
            old, targets, self.beta, task_ids=task_ids, debias=self.debias,
            sigma_min=self.sigma_min, sigma_max=self.sigma_max, batch_rule=self.batch_rule,
        )
        w, b = pop(self.linear.weight, self.linear.bias, old, new)
        touched = new.count > old.count
        at_bound = sigma_at_bound(new, sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        self.clipped_steps.add_((touched & at_bound).long())
        self.linear.weight.copy_(w)
        self.linear.bias.copy_(b)
        self.mu.copy_(new.mu)
        self.sigma.copy_(new.sigma)
        self.count.copy_(new.count)
        return self.state
