"""Catalogue checks ``popart`` (meta-gradients through differentiable PopArt) and ``prop3`` (Proposition 3).

See :mod:`metaopt.verify.catalogue` for what each check compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import InnerLoop, PopArtSpec, adapt
from metaopt.inner_optim import sgd
from metaopt.meta_params import MetaParameters
from metaopt.verify._rows import F64, CheckResult, _row, _value
from metaopt.verify.core import check_gradients, relative_error

__all__ = ["check_popart", "check_prop3"]


class _ValueNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
        self.value = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.value(self.body(x)).squeeze(-1)


def _popart_problem(steps: int) -> tuple[nn.Module, InnerLoop, list[tuple[dict[str, Tensor], dict[str, Tensor]]]]:
    """A value net with a PopArt head and two regression tasks whose targets are ~10x the unit scale."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _ValueNet().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 8, 3, generator=g, dtype=F64)  # [tasks, inner/outer, n, 3]
    y = 10 * (x @ torch.randn(2, 1, 3, 1, generator=g, dtype=F64)).squeeze(-1) + 10
    tasks = [({"x": x[t, 0], "y": y[t, 0]}, {"x": x[t, 1], "y": y[t, 1]}) for t in range(2)]

    def loss(params: dict[str, Tensor], batch: Any, state: pa.PopArtState | None) -> Tensor:
        assert state is not None
        pred = functional_call(model, params, (batch["x"],))
        return 0.5 * ((pred - pa.normalize(state, batch["y"])) ** 2).mean()

    # rlax's plain average and POP from the first step: a debiased first ART step (beta_1 = 1) would leave beta
    # no meta-gradient at K = 1, and this check is about beta's.
    spec = PopArtSpec("value.weight", "value.bias", targets=lambda params, batch, state: batch["y"], debias=False,
                      first_pop=True)
    momentum = 0.5 if steps > 1 else 0.0
    return model, InnerLoop(loss, steps=steps, optimizer=sgd(momentum=momentum), popart=spec), tasks


def _popart_objective(model: nn.Module, inner: InnerLoop, tasks: list, meta: MetaParameters, engine: str) -> Tensor:
    r"""Sum over tasks of :math:`\frac12 \operatorname{mean}(\sigma_K n_K(x) + \mu_K - y)^2` on the outer split."""
    total = torch.zeros((), dtype=F64)
    for inb, outb in tasks:
        res = adapt(model, inner, inb, meta, engine=engine, popart_state=pa.init(1, dtype=F64))
        assert res.popart_state is not None
        pred = pa.unnormalize(res.popart_state, functional_call(model, res.params, (outb["x"],)))
        total = total + 0.5 * ((pred - outb["y"]) ** 2).mean()
    return total


def check_popart(engines: Sequence[str]) -> list[CheckResult]:
    """PopArt lr/beta meta-gradients (``K = 1, 3``) vs central FD on each engine, and each engine vs ``func``.

    The problem: a tanh value net with a PopArt head, two regression tasks with targets of scale ~10; each
    inner step runs ART/POP then SGD (momentum 0.5 for ``K = 3``) on the normalized loss; the outer loss is
    the unnormalized squared error on held-out data. The cross-engine rows (also for the full gradient
    w.r.t. the initial weights ``theta0``) need ``"func"`` among ``engines``.
    """
    name, rows = "popart", []
    for steps in (1, 3):
        grads: dict[str, dict[str, Tensor]] = {}
        for engine in engines:
            model, inner, tasks = _popart_problem(steps)
            meta = MetaParameters(lr=0.05, beta=0.3, learn=("lr", "beta"), dtype=F64)
            inputs = {"log_lr": meta.log_lr, "logit_beta": meta.logit_beta}
            report = check_gradients(lambda: _popart_objective(model, inner, tasks, meta, engine),  # noqa: B023
                                     inputs, eps=1e-5, rtol=1e-6)
            for c in report.checks:
                rows.append(_row(name, engine, f"K={steps} d/d{c.name} vs FD", c.autograd, c.reference, 1e-6,
                                 "central FD, eps 1e-5" + ("; SGD momentum 0.5" if steps > 1 else "")))
            loss = _popart_objective(model, inner, tasks, meta, engine)
            params = list(model.parameters())
            g = torch.autograd.grad(loss, [*inputs.values(), *params])
            grads[engine] = {"log_lr": g[0], "logit_beta": g[1], "theta0": torch.cat([t.reshape(-1) for t in g[2:]])}
        if "func" in grads:
            for engine in (e for e in engines if e != "func"):
                for q, ref in grads["func"].items():
                    rows.append(_row(name, engine, f"K={steps} d/d{q} vs func", grads[engine][q], ref, 1e-8,
                                     "cross-engine agreement" + ("; L2 norms" if q == "theta0" else "")))
    return rows


# ------------------------------------------------------------------------------------------------- prop3
def _bits(y: Tensor) -> Tensor:
    return ((y.long().unsqueeze(-1) >> torch.arange(16)) & 1).to(F64)


def _body(params: Sequence[Tensor], x: Tensor) -> Tensor:
    w1, b1, w2, b2 = params
    return torch.tanh(torch.tanh(x @ w1.T + b1) @ w2.T + b2)


def check_prop3(engines: Sequence[str], num_steps: int = 150) -> list[CheckResult]:
    r"""Proposition 3: Algorithm 1 (ART, POP, SGD on :math:`\frac12\delta^2`) equals Algorithm 2 (Normalized SGD).

    Online binary regression (16-bit inputs, targets 0..1000), body 16-8-8 tanh, :math:`\beta = 0.1`,
    :math:`\alpha = 0.02`, from :math:`\mu_0 = 0, \sigma_0 = 1`. Algorithm 1 does, per sample,
    :math:`\delta = W h + b - (Y - \mu)/\sigma` and SGD on :math:`\frac12 \delta^2` for :math:`(\theta, W, b)`;
    Algorithm 2 keeps :math:`\tilde W = \sigma W, \tilde b = \sigma b + \mu` and calls
    :func:`metaopt.popart.normalized_sgd_step`. The rows hold the maximum over all steps of the relative
    difference of the body parameters and of the unnormalized predictions on 32 probe inputs.
    ``engines`` is ignored (no meta-gradient engine is involved).
    """
    g = torch.Generator().manual_seed(9)
    beta, lr = 0.1, 0.02
    theta0 = [torch.randn(8, 16, generator=g, dtype=F64) / 4, torch.zeros(8, dtype=F64),
              torch.randn(8, 8, generator=g, dtype=F64) / math.sqrt(8), torch.zeros(8, dtype=F64)]
    w0, b0 = torch.randn(1, 8, generator=g, dtype=F64) / math.sqrt(8), torch.zeros(1, dtype=F64)
    ys = torch.randint(0, 1001, (num_steps,), generator=g).to(F64)
    probe = _bits(torch.randint(0, 1024, (32,), generator=g))
    th1, w1, b1, s1 = list(theta0), w0, b0, pa.init(1, dtype=F64)
    th2, wt, bt, s2 = list(theta0), w0, b0, pa.init(1, dtype=F64)
    dev_theta = dev_pred = 0.0
    for y in ys:
        y = y.reshape(1)
        x = _bits(y)
        # Algorithm 1: ART, POP, then SGD on the normalized loss.
        new = pa.art(s1, y, beta)
        w1, b1 = pa.pop(w1, b1, s1, new)
        s1 = new
        params = [p.detach().requires_grad_() for p in (*th1, w1, b1)]
        delta = _body(params[:4], x) @ params[4].T + params[5] - pa.normalize(s1, y)
        grads = torch.autograd.grad(0.5 * (delta**2).sum(), params)
        *th1, w1, b1 = [(p - lr * gr).detach() for p, gr in zip(params, grads, strict=True)]
        # Algorithm 2: ART, then Normalized SGD on the unnormalized head.
        s2 = pa.art(s2, y, beta)
        body = [p.detach().requires_grad_() for p in th2]
        th2, wt, bt = pa.normalized_sgd_step(body, _body(body, x), wt, bt, y, s2, lr)
        th2, wt, bt = [p.detach() for p in th2], wt.detach(), bt.detach()
        flat1, flat2 = (torch.cat([p.reshape(-1) for p in th]) for th in (th1, th2))
        f1 = pa.unnormalize(s1, _body(th1, probe) @ w1.T + b1)
        f2 = _body(th2, probe) @ wt.T + bt
        dev_theta = max(dev_theta, relative_error(flat1, flat2))
        dev_pred = max(dev_pred, relative_error(f1, f2))
    note = f"max over {num_steps} steps; autograd = Algorithm 1, reference = Algorithm 2 (final, L2 norms); " \
           f"final sigma = {float(s1.sigma):.4g}"
    return [
        CheckResult("prop3", "-", "body params: Alg. 1 vs Alg. 2", _value(flat1), _value(flat2), dev_theta, 1e-10,
                    dev_theta <= 1e-10, note),
        CheckResult("prop3", "-", "predictions: Alg. 1 vs Alg. 2", _value(f1), _value(f2), dev_pred, 1e-10,
                    dev_pred <= 1e-10, note),
    ]
