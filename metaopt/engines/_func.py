"""The ``func`` engine: :func:`torch.func.grad`, vectorizable over tasks with :func:`torch.func.vmap`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from metaopt.engines._spec import Params

__all__ = ["FuncEngine"]


class FuncEngine:
    """Differentiates the inner loss with :func:`torch.func.grad` and adds the updates out of place.

    The loss's closure (PopArt statistics, the batch) is constant for :func:`torch.func.grad` by
    construction, and the whole step can run under :func:`torch.func.vmap`.
    """

    name = "func"
    vectorized = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> FuncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def step(
        self, params: Params, loss_fn: Callable[[Params], Tensor], update_fn: Callable[[Params], Params]
    ) -> tuple[Params, Tensor]:
        """``params + update_fn(grad loss_fn(params))`` and the (detached) loss."""

        def with_aux(p: Params) -> tuple[Tensor, Tensor]:
            loss = loss_fn(p)
            return loss, loss.detach()

        grads, loss = torch.func.grad(with_aux, has_aux=True)(params)
        updates = update_fn(grads)
        return {n: p + updates[n] for n, p in params.items()}, loss
