"""The ``torchopt`` engine: ``torchopt.MetaOptimizer`` on the module, state restored after the inner loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from metaopt.engines._higher import _alias
from metaopt.engines._spec import Params

__all__ = ["TorchOptEngine", "set_module_tensor"]


def set_module_tensor(model: nn.Module, name: str, value: Tensor) -> None:
    """Put ``value`` into the slot of parameter ``name`` (what TorchOpt's ``MetaOptimizer.step`` does)."""
    prefix, _, leaf = name.rpartition(".")
    model.get_submodule(prefix)._parameters[leaf] = value  # type: ignore[assignment]


class TorchOptEngine:
    """``torchopt.MetaOptimizer(model, transform)`` as the gradient tape, as in TorchOpt's MAML examples.

    The module's state is saved with ``torchopt.extract_state_dict`` on entry and restored with
    ``recover_state_dict`` on exit. Each step writes the fast weights into the module, computes the loss, and
    calls ``MetaOptimizer.step(loss)``: TorchOpt differentiates with ``create_graph=True``, applies a
    gradient transformation that returns metaopt's updates, adds them out of place and writes the new
    weights back into the module.
    """

    name = "torchopt"
    vectorized = False

    def __init__(self, model: nn.Module, torchopt: Any) -> None:
        self.model, self.torchopt = model, torchopt
        self._transform: Callable[..., Any] | None = None

    def __enter__(self) -> TorchOptEngine:
        to = self.torchopt
        self._saved = to.extract_state_dict(self.model, by="reference")
        impl = to.base.GradientTransformation(lambda params: to.base.EmptyState(), self._update)
        self.opt = to.MetaOptimizer(self.model, impl)
        return self

    def __exit__(self, *exc: object) -> None:
        self.torchopt.recover_state_dict(self.model, self._saved)

    def _update(self, grads: Any, state: Any, *, params: Any = None, inplace: bool = True) -> Any:
        assert self._transform is not None
        return self._transform(grads, params), state

    def step(
        self, params: Params, loss_fn: Callable[[Params], Tensor], update_fn: Callable[[Params], Params]
    ) -> tuple[Params, Tensor]:
        """One ``MetaOptimizer.step`` on ``params``; returns the new fast weights and the (detached) loss."""
        fast = {n: _alias(p) for n, p in params.items()}
        for n, t in fast.items():
            set_module_tensor(self.model, n, t)
        by_id = {id(t): n for n, t in fast.items()}

        def transform(grads: tuple[Tensor | None, ...], flat: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            names = [by_id[id(p)] for p in flat]
            named = {n: g if g is not None else torch.zeros_like(p) for n, g, p in zip(names, grads, flat,
                                                                                      strict=True)}
            updates = update_fn(named)
            return tuple(updates[n] for n in names)

        self._transform = transform
        loss = loss_fn(fast)
        self.opt.step(loss)
        return dict(self.model.named_parameters()), loss.detach()
