"""higher's ``copy_initial_weights`` toy, with raw higher and with metaopt's three engines.

x ~ U(0, 1)^{100x1} (numpy seed 1), y = 3.5 x, ``Linear(1, 1, bias=False)`` in float64 (torch seed 3),
5 inner SGD steps (lr 0.3, momentum 0.5) on the mean squared error, meta-loss (w_5 - 3.5)^2. higher's
published numbers: meta-loss 0.011928 and d meta / d w0 = -0.005311.

With ``copy_initial_weights=True`` (higher's default) the inner loop starts from a *copy* of the weights,
so the model's own weight gets no gradient; MAML-style code needs ``False``. metaopt's engines always
differentiate to the model's parameters. Each gradient is also checked by a central finite difference.
"""

from __future__ import annotations

import sys

import higher
import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from metaopt.engines import ENGINES, InnerLoop, adapt
from metaopt.inner_optim import sgd
from metaopt.meta_params import MetaParameters
from metaopt.verify import finite_difference

PUBLISHED_LOSS, PUBLISHED_GRAD = 0.011928, -0.005311

# --- seeding: the toy's data and initial weight are defined by these two seeds -----------------------
np.random.seed(1)
X = torch.from_numpy(np.random.uniform(0, 1, (100, 1)))
Y = 3.5 * X


def make_model() -> nn.Linear:
    """The toy's model, initialized right after ``torch.manual_seed(3)``."""
    torch.manual_seed(3)
    return nn.Linear(1, 1, bias=False).double()


def raw_higher(copy_initial_weights: bool) -> tuple[float, torch.Tensor | None]:
    """Meta-loss and d meta / d w0 with plain ``higher.innerloop_ctx``."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=copy_initial_weights) as (fmodel, diffopt):
        for _ in range(5):
            diffopt.step(((fmodel(X) - Y) ** 2).mean())
        meta_loss = ((fmodel.fast_params[0] - 3.5) ** 2).sum()
        (grad,) = torch.autograd.grad(meta_loss, model.weight, allow_unused=True)
    return float(meta_loss.detach()), grad


def metaopt_meta_loss(model: nn.Linear, engine: str) -> torch.Tensor:
    """The same inner loop described once and run on ``engine``."""

    def mse(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor], state: None) -> torch.Tensor:
        x, y = batch
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    inner = InnerLoop(mse, steps=5, optimizer=sgd(momentum=0.5))
    meta = MetaParameters(lr=0.3, dtype=torch.float64)
    w5 = adapt(model, inner, (X, Y), meta, engine=engine).params["weight"]
    return ((w5 - 3.5) ** 2).sum()


def main() -> int:
    """Print every variant next to the published numbers; return 1 if one disagrees."""
    print(f"published: meta-loss {PUBLISHED_LOSS}, d meta / d w0 {PUBLISHED_GRAD}")
    ok = True
    for ciw in (True, False):
        loss, grad = raw_higher(ciw)
        shown = "None (no gradient reaches the model)" if grad is None else f"{float(grad):.6f}"
        print(f"raw higher, copy_initial_weights={ciw!s:<5}: meta-loss {loss:.6f}, d/dw0 {shown}")
        ok &= (grad is None) if ciw else round(float(grad), 6) == PUBLISHED_GRAD
    for engine in ENGINES:
        model = make_model()
        loss = metaopt_meta_loss(model, engine)
        (grad,) = torch.autograd.grad(loss, model.weight)
        fd, _ = finite_difference(lambda: metaopt_meta_loss(model, engine), model.weight, eps=1e-6)  # noqa: B023
        print(f"metaopt engine={engine:<9}: meta-loss {float(loss):.6f}, d/dw0 {float(grad):.6f} "
              f"(finite difference {float(fd[0]):.6f})")
        ok &= round(float(loss), 6) == PUBLISHED_LOSS and round(float(grad), 6) == PUBLISHED_GRAD
        ok &= abs(float(grad) - float(fd[0])) <= 1e-6 * abs(float(fd[0]))
    print("all variants reproduce the published values" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # the toy has no options
    sys.exit(main())
