"""A small supervised problem with PopArt, shared by the engine tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import InnerLoop, PopArtSpec
from metaopt.inner_optim import adam, sgd


class ValueNet(nn.Module):
    def __init__(self, n_in: int = 3, hidden: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh())
        self.value = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(self.body(x)).squeeze(-1)


def make_model(seed: int = 0) -> ValueNet:
    torch.manual_seed(seed)
    return ValueNet().double()


def make_tasks(num_tasks: int = 3, n: int = 8, seed: int = 1, scale: float = 10.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tasks, 2, n, 3, generator=g, dtype=torch.float64)  # [tasks, inner/outer, n, 3]
    w = torch.randn(num_tasks, 1, 3, 1, generator=g, dtype=torch.float64)
    y = scale * (x @ w).squeeze(-1) + scale
    return {"x": x, "y": y}


def bootstrapped_targets(model: nn.Module, gamma: float = 0.9):
    """ART targets that depend on the fast weights: ``y + gamma * V(x')`` with ``V`` unnormalized, not detached."""

    def targets(params, batch, state):
        return batch["y"] + gamma * pa.unnormalize(state, functional_call(model, params, (batch["x"].flip(0),)))

    return targets


def make_inner(model: nn.Module, *, popart: bool = True, steps: int = 1, kind: str = "sgd", momentum: float = 0.0,
               first_order: bool = False, truncate: int | None = None, eps: float = 1e-8,
               weight_targets: bool = False) -> InnerLoop:
    """The toy inner loop; ``weight_targets`` makes the ART targets *and* the loss's targets weight-dependent."""
    boot = bootstrapped_targets(model)

    def loss(params, batch, state):
        pred = functional_call(model, params, (batch["x"],))
        y = boot(params, batch, state) if weight_targets else batch["y"]
        target = pa.normalize(state, y) if state is not None else y
        return 0.5 * ((pred - target) ** 2).mean()

    targets = boot if weight_targets else (lambda params, batch, state: batch["y"])
    spec = (PopArtSpec("value.weight", "value.bias", targets=targets, debias=False, first_pop=True) if popart
            else None)
    opt = adam(eps=eps) if kind == "adam" else sgd(momentum=momentum)
    return InnerLoop(loss, steps=steps, optimizer=opt, first_order=first_order, truncate=truncate, popart=spec)


def outer_loss(model: nn.Module, params, batch, state) -> torch.Tensor:
    """Unnormalized squared error of the adapted model on the task's outer data."""
    pred = functional_call(model, params, (batch["x"],))
    if state is not None:
        pred = pa.unnormalize(state, pred)
    return 0.5 * ((pred - batch["y"]) ** 2).mean()
