"""The ``higher`` engine: ``higher.innerloop_ctx`` with a differentiable SGD of rate 1 applying metaopt's updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from metaopt.engines._spec import Params

__all__ = ["HigherEngine"]


def _alias(p: Tensor) -> Tensor:
    """A new autograd node with ``p``'s value: a gradient w.r.t. it counts only paths through it."""
    return p.view_as(p) if p.requires_grad else p.detach().requires_grad_()


class HigherEngine:
    """``higher.innerloop_ctx(model, SGD(lr=1), copy_initial_weights=False)`` as the gradient tape.

    Each step writes the fast weights into the patched model (``fmodel.update_params``), computes the loss on
    them, and calls ``diffopt.step(loss, grad_callback=...)``: higher differentiates the loss with
    ``create_graph=True``, the callback turns the gradients into metaopt's updates ``u`` (returned as ``-u``),
    and higher's SGD step of rate 1 gives ``p - (-u) = p + u``. The fast weights are fresh autograd nodes
    (views) every step, so the gradient sees only the loss's direct dependence on them (PopArt statistics
    computed from the same weights are constants, as in the ``func`` engine).
    """

    name = "higher"
    vectorized = False

    def __init__(self, model: nn.Module, higher: Any) -> None:
        self.model, self.higher = model, higher
        self.names = [n for n, _ in model.named_parameters()]

    def __enter__(self) -> HigherEngine:
        opt = torch.optim.SGD(self.model.parameters(), lr=1.0)
        self._ctx = self.higher.innerloop_ctx(self.model, opt, copy_initial_weights=False, track_higher_grads=True)
        self.fmodel, self.diffopt = self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(None, None, None)

    def step(
        self, params: Params, loss_fn: Callable[[Params], Tensor], update_fn: Callable[[Params], Params]
    ) -> tuple[Params, Tensor]:
        """One ``diffopt.step`` on ``params``; returns the new fast weights and the (detached) loss."""
        fast = {n: _alias(params[n]) for n in self.names}
        self.fmodel.update_params([fast[n] for n in self.names])
        loss = loss_fn(fast)

        def callback(grads: list[Tensor | None]) -> list[Tensor]:
            named = {n: g if g is not None else torch.zeros_like(fast[n]) for n, g in zip(self.names, grads,
                                                                                           strict=True)}
            updates = update_fn(named)
            return [-updates[n] for n in self.names]

        self.diffopt.step(loss, grad_callback=callback)
        return dict(zip(self.names, self.fmodel.fast_params, strict=True)), loss.detach()
