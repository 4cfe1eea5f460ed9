"""Catalogue checks ``torchopt-toy`` and ``higher-toy``: the two libraries' own examples, on every engine.

See :mod:`metaopt.verify.catalogue` for what each check compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaopt.engines import InnerLoop, adapt
from metaopt.inner_optim import sgd
from metaopt.meta_params import MetaParameters
from metaopt.verify._rows import F64, CheckResult, _row
from metaopt.verify.core import check_gradients

__all__ = [
    "HIGHER_TOY_PUBLISHED",
    "ToyNet",
    "TOY_INNER",
    "torchopt_toy_meta_loss",
    "check_torchopt_toy",
    "higher_toy_data",
    "higher_toy_model",
    "higher_toy_meta_loss",
    "check_higher_toy",
]

#: higher's printed results for its copy_initial_weights toy (6 decimals).
HIGHER_TOY_PUBLISHED = {"meta_loss": 0.011928, "grad_w0": -0.005311}
_PUBLISHED_HALF_ULP = 0.5e-6  # half a unit of the last printed digit


# ------------------------------------------------------------------------------------------ torchopt-toy
class ToyNet(nn.Module):
    r"""TorchOpt's toy network :math:`f(x) = a x^2` with one scalar parameter :math:`a`."""

    def __init__(self, a0: float = 1.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a0, dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        """Return :math:`a x^2`."""
        return self.a * x**2


#: Inner loss of the toy: the network output itself, on fast weights ``params`` (batch = ``x``).
TOY_INNER = InnerLoop(lambda params, x, state: params["a"] * x**2, steps=1)


def torchopt_toy_meta_loss(net: ToyNet, x: Tensor, meta: MetaParameters, engine: str) -> Tensor:
    r"""Outer loss :math:`a_1 x^2` after one inner SGD step :math:`a_1 = a_0 - \eta \nabla_a (a_0 x^2)`."""
    a1 = adapt(net, TOY_INNER, x, meta, engine=engine).params["a"]
    return a1 * x**2


def check_torchopt_toy(engines: Sequence[str]) -> list[CheckResult]:
    r"""TorchOpt's toy on each engine: :math:`dL/dx = -28`, :math:`dL/d\eta = -16`, analytic and FD.

    :math:`dL/d\eta` is read from the gradient w.r.t. ``log_lr`` as :math:`dL/d\eta = (dL/d\log\eta)/\eta`.
    """
    name, a0, x0, eta = "torchopt-toy", 1.0, 2.0, 1.0
    dx_true, dlr_true = 2 * a0 * x0 - 4 * eta * x0**3, -(x0**4)
    rows = []
    for engine in engines:
        net = ToyNet(a0)
        x = torch.tensor(x0, dtype=F64, requires_grad=True)
        meta = MetaParameters(lr=eta, learn=("lr",), dtype=F64)
        report = check_gradients(lambda: torchopt_toy_meta_loss(net, x, meta, engine),  # noqa: B023
                                 {"x": x, "log_lr": meta.log_lr}, eps=1e-6, rtol=1e-8)
        lr_t = meta.lr
        assert isinstance(lr_t, Tensor)  # one shared rate here
        lr = float(lr_t.detach())
        dx, dx_fd = report["x"].autograd, report["x"].reference
        dlr, dlr_fd = report["log_lr"].autograd / lr, report["log_lr"].reference / lr
        rows += [
            _row(name, engine, "dL/dx vs analytic", dx, dx_true, 1e-12, "2 a0 x - 4 lr x^3"),
            _row(name, engine, "dL/dx vs FD", dx, dx_fd, 1e-8, "central FD, eps 1e-6"),
            _row(name, engine, "dL/dlr vs analytic", dlr, dlr_true, 1e-12, "-x^4; dL/dlr = dL/dlog_lr / lr"),
            _row(name, engine, "dL/dlr vs FD", dlr, dlr_fd, 1e-8, "central FD on log_lr, eps 1e-6"),
        ]
    if "torchopt" in engines:
        rows.append(_row(name, "torchopt-raw", "dL/dx (MetaSGD) vs analytic", _raw_torchopt_dx(a0, x0, eta), dx_true,
                         1e-12, "plain torchopt.MetaSGD(net, lr), no metaopt"))
    return rows


def _raw_torchopt_dx(a0: float, x0: float, eta: float) -> Tensor:
    """``dL/dx`` of the toy with plain ``torchopt.MetaSGD`` (TorchOpt's own example)."""
    import torchopt

    net = ToyNet(a0)
    x = torch.tensor(x0, dtype=F64, requires_grad=True)
    opt = torchopt.MetaSGD(net, lr=eta)
    opt.step(net(x))
    return torch.autograd.grad(net(x), x)[0]


# -------------------------------------------------------------------------------------------- higher-toy
def higher_toy_data() -> tuple[Tensor, Tensor]:
    """``x ~ U(0, 1)^{100x1}`` from numpy seed 1 (legacy ``RandomState``) and ``y = 3.5 x``, float64."""
    x = torch.from_numpy(np.random.RandomState(1).uniform(0, 1, (100, 1)))
    return x, 3.5 * x


def higher_toy_model() -> nn.Linear:
    """``Linear(1, 1, bias=False)`` built right after ``torch.manual_seed(3)``, then cast to float64.

    The global RNG is forked, so the caller's random state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return nn.Linear(1, 1, bias=False).double()


def _higher_toy_inner(model: nn.Module) -> InnerLoop:
    def mse(params: dict[str, Tensor], batch: tuple[Tensor, Tensor], state: Any) -> Tensor:
        x, y = batch
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    return InnerLoop(mse, steps=5, optimizer=sgd(momentum=0.5))


def higher_toy_meta_loss(model: nn.Linear, meta: MetaParameters, engine: str) -> Tensor:
    r"""Meta-loss :math:`(w_5 - 3.5)^2` after 5 SGD steps (momentum 0.5) on :math:`\frac1n\sum_i (w x_i - y_i)^2`."""
    res = adapt(model, _higher_toy_inner(model), higher_toy_data(), meta, engine=engine)
    return ((res.params["weight"] - 3.5) ** 2).sum()


def _raw_higher_grad(copy_initial_weights: bool) -> tuple[Tensor, Tensor | None]:
    """Meta-loss and ``d meta / d w0`` with plain ``higher.innerloop_ctx`` (``None`` = no gradient path)."""
    import higher

    model = higher_toy_model()
    x, y = higher_toy_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=copy_initial_weights) as (fmodel, diffopt):
        for _ in range(5):
            diffopt.step(((fmodel(x) - y) ** 2).mean())
        meta_loss = ((fmodel.fast_params[0] - 3.5) ** 2).sum()
        (grad,) = torch.autograd.grad(meta_loss, model.weight, allow_unused=True)
    return meta_loss.detach(), grad


def check_higher_toy(engines: Sequence[str]) -> list[CheckResult]:
    """The higher toy on each engine (published values and FD), plus raw higher's ``copy_initial_weights``.

    The published values are printed to 6 decimals, so they are held to half a unit of the last digit
    (``0.5e-6 / |published|`` relative).
    """
    name, pub = "higher-toy", HIGHER_TOY_PUBLISHED
    tol_loss, tol_grad = (_PUBLISHED_HALF_ULP / abs(pub[k]) for k in ("meta_loss", "grad_w0"))
    rows = []
    for engine in engines:
        model = higher_toy_model()
        meta = MetaParameters(lr=0.3, learn=("lr",), dtype=F64)
        report = check_gradients(lambda: higher_toy_meta_loss(model, meta, engine),  # noqa: B023
                                 {"w0": model.weight, "log_lr": meta.log_lr}, eps=1e-6, rtol=1e-6)
        loss = higher_toy_meta_loss(model, meta, engine)
        g = report["w0"].autograd
        rows += [
            _row(name, engine, "meta-loss vs published", loss, pub["meta_loss"], tol_loss,
                 "published 0.011928 (6 decimals: tol = half a unit of the last digit)"),
            _row(name, engine, "dmeta/dw0 vs published", g, pub["grad_w0"], tol_grad,
                 "published -0.005311 (6 decimals: tol = half a unit of the last digit)"),
            _row(name, engine, "dmeta/dw0 vs FD", g, report["w0"].reference, 1e-6, "central FD, eps 1e-6"),
            _row(name, engine, "dmeta/dlog_lr vs FD", report["log_lr"].autograd, report["log_lr"].reference, 1e-6,
                 "central FD, eps 1e-6"),
        ]
    if "higher" in engines:
        loss, grad = _raw_higher_grad(copy_initial_weights=False)
        rows.append(_row(name, "higher-raw", "dmeta/dw0 (copy_initial_weights=False) vs published",
                         grad if grad is not None else float("nan"), pub["grad_w0"], tol_grad,
                         "plain higher.innerloop_ctx, no metaopt"))
        loss, grad = _raw_higher_grad(copy_initial_weights=True)
        size = 0.0 if grad is None else float(grad.abs().max())
        rows.append(CheckResult(
            name, "higher-raw", "dmeta/dw0 (copy_initial_weights=True)", size, 0.0, size, 0.0, grad is None,
            "expected: no gradient reaches the model's initial weight (autograd.grad gives None); "
            "rel_error = max |grad|",
        ))
    return rows
