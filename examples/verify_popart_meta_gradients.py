"""Meta-gradients of PopArt's beta and the inner learning rate, checked by finite differences on each engine.

A small value network regresses targets of scale ~10 on two tasks. Each inner step runs ART (step size
beta) and POP on the value head's fast weights, then SGD (learning rate lr) on the normalized loss; the
outer loss is the unnormalized error after K steps. ``check_gradients`` compares the autograd gradients
w.r.t. ``log_lr`` and ``logit_beta`` with central differences in float64, and the engines are compared
with each other.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.dataclass_args import parse_dataclass
from metaopt.engines import ENGINES, InnerLoop, PopArtSpec, adapt
from metaopt.inner_optim import sgd
from metaopt.meta_params import MetaParameters
from metaopt.verify import check_gradients, relative_error


@dataclass
class Args:
    """Arguments; each field is a command-line option."""

    steps: int = 3
    """inner steps K"""
    lr: float = 0.05
    """initial inner learning rate"""
    beta: float = 0.3
    """initial PopArt step size"""
    seed: int = 0
    """seed of the network and the tasks"""


def main(args: Args) -> int:
    """Check every engine against finite differences and against ``func``; return 1 on a failure."""
    # --- seeding ---------------------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1), nn.Flatten(0)).double()
    x = torch.randn(2, 2, 8, 3, dtype=torch.float64)  # [tasks, inner/outer split, samples, features]
    y = 10 * (x @ torch.randn(2, 1, 3, 1, dtype=torch.float64)).squeeze(-1) + 10
    tasks = [({"x": x[t, 0], "y": y[t, 0]}, {"x": x[t, 1], "y": y[t, 1]}) for t in range(2)]

    def inner_loss(params: dict, batch: dict, state: pa.PopArtState) -> torch.Tensor:
        pred = functional_call(model, params, (batch["x"],))
        return 0.5 * ((pred - pa.normalize(state, batch["y"])) ** 2).mean()

    # debias=False: one debiased ART step sets beta_1 = 1, leaving beta no meta-gradient to check at K = 1
    spec = PopArtSpec("2.weight", "2.bias", targets=lambda params, batch, state: batch["y"], debias=False,
                      first_pop=True)
    inner = InnerLoop(inner_loss, steps=args.steps, optimizer=sgd(), popart=spec)
    meta = MetaParameters(lr=args.lr, beta=args.beta, learn=("lr", "beta"), dtype=torch.float64)

    def outer_loss(engine: str) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for inb, outb in tasks:
            res = adapt(model, inner, inb, meta, engine=engine, popart_state=pa.init(1, dtype=torch.float64))
            pred = pa.unnormalize(res.popart_state, functional_call(model, res.params, (outb["x"],)))
            total = total + 0.5 * ((pred - outb["y"]) ** 2).mean()
        return total

    inputs = {"log_lr": meta.log_lr, "logit_beta": meta.logit_beta}
    ok, grads = True, {}
    for engine in ENGINES:
        report = check_gradients(lambda: outer_loss(engine), inputs, eps=1e-5, rtol=1e-6)  # noqa: B023
        print(f"engine={engine}, K={args.steps}\n{report.table()}\n")
        ok &= report.passed
        grads[engine] = torch.autograd.grad(outer_loss(engine), list(inputs.values()))
    for engine in ENGINES[1:]:
        err = max(relative_error(a, b) for a, b in zip(grads[engine], grads["func"], strict=True))
        print(f"{engine} vs func: max relative difference {err:.1e}")
        ok &= err <= 1e-8
    print("all meta-gradients verified" if ok else "FAILED")
    return 0 if ok else 1


def parse_args() -> Args:
    """Parse :class:`Args` from the command line."""
    return parse_dataclass(Args, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main(parse_args()))
