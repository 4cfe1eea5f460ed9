"""TorchOpt's toy meta-gradient on every metaopt engine: dL/dx = -28 and dL/dlr = -16.

The network is f(x) = a x^2 with a0 = 1 and the meta-parameter is the input x = 2. One inner SGD step on
``a`` with learning rate lr = 1 gives a1 = a0 - lr x^2; the outer loss is a1 x^2. Analytically

    dL/dx  = 2 a0 x - 4 lr x^3 = -28,        dL/dlr = -x^4 = -16.

metaopt learns ``log_lr`` (dL/dlr = dL/dlog_lr / lr). The toy has no randomness, so there is no seed.
Run ``python examples/verify_torchopt_toy.py [--x 3 --lr 0.5 --engines func,torchopt]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from metaopt.dataclass_args import parse_dataclass
from metaopt.engines import InnerLoop, adapt
from metaopt.meta_params import MetaParameters


@dataclass
class Args:
    """Arguments; each field is a command-line option."""

    a0: float = 1.0
    """initial value of the network parameter a"""
    x: float = 2.0
    """the meta-parameter x (the network's input)"""
    lr: float = 1.0
    """inner SGD learning rate"""
    engines: str = "func,higher,torchopt"
    """comma-separated engines to run"""


class ToyNet(nn.Module):
    """f(x) = a x^2."""

    def __init__(self, a0: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return a x^2."""
        return self.a * x**2


def meta_gradients(args: Args, engine: str) -> tuple[float, float]:
    """Return (dL/dx, dL/dlr) computed by autograd through one inner step on ``engine``."""
    net = ToyNet(args.a0)
    x = torch.tensor(args.x, dtype=torch.float64, requires_grad=True)
    meta = MetaParameters(lr=args.lr, learn=("lr",), dtype=torch.float64)
    # The inner loss is the network output, on fast weights `params`; the batch is x itself.
    inner = InnerLoop(lambda params, batch, state: params["a"] * batch**2, steps=1)
    a1 = adapt(net, inner, x, meta, engine=engine).params["a"]
    outer = a1 * x**2
    dx, dlog_lr = torch.autograd.grad(outer, [x, meta.log_lr])
    return float(dx), float(dlog_lr / meta.lr.detach())


def main(args: Args) -> int:
    """Print each engine's meta-gradients next to the analytic ones; return 1 on a mismatch."""
    dx_true = 2 * args.a0 * args.x - 4 * args.lr * args.x**3
    dlr_true = -(args.x**4)
    print(f"{'engine':<10}{'dL/dx':>12}{'analytic':>12}{'dL/dlr':>12}{'analytic':>12}")
    ok = True
    for engine in args.engines.split(","):
        dx, dlr = meta_gradients(args, engine)
        print(f"{engine:<10}{dx:>12.6f}{dx_true:>12.6f}{dlr:>12.6f}{dlr_true:>12.6f}")
        ok &= abs(dx - dx_true) <= 1e-10 * abs(dx_true) + 1e-12 and abs(dlr - dlr_true) <= 1e-10 * abs(dlr_true)
    print("all engines match the analytic values" if ok else "MISMATCH")
    return 0 if ok else 1


def parse_args() -> Args:
    """Parse :class:`Args` from the command line."""
    return parse_dataclass(Args, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main(parse_args()))
