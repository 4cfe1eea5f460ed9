r"""The catalogue of meta-gradient checks behind ``metaopt verify``.

Every check recomputes a number that is known independently — an analytic value, a value published with
a library, a finite difference, or a second algorithm — and returns one :class:`CheckResult` row per
compared quantity. Everything runs in float64. The checks (names as used by :func:`run_catalogue`):

``torchopt-toy``
    TorchOpt's toy: the network :math:`f(x) = a x^2` with :math:`a_0 = 1`, meta-parameter :math:`x = 2`,
    one inner SGD step on :math:`a` with learning rate :math:`\eta = 1`:
    :math:`a_1 = a_0 - \eta x^2`, outer loss :math:`L = a_1 x^2`. Analytically
    :math:`\partial L/\partial x = 2 a_0 x - 4 \eta x^3 = -28` and :math:`\partial L/\partial \eta = -x^4 = -16`.
    Plain ``torchopt.MetaSGD`` (outside metaopt) is checked against -28 too.
``higher-toy``
    higher's ``copy_initial_weights`` example: 5 inner SGD steps (lr 0.3, momentum 0.5) of
    ``Linear(1, 1, bias=False)`` on the mean squared error of :math:`y = 3.5 x` (the mean over the 100
    samples reproduces the published numbers; a sum diverges), meta-loss :math:`(w_5 - 3.5)^2`. Published:
    meta-loss 0.011928, :math:`\partial/\partial w_0 = -0.005311`. Raw
    ``higher.innerloop_ctx(copy_initial_weights=True)`` gives the initial weight no gradient at all.
``darts``
    DARTS' one-step hypergradient of :math:`L_{val}(w', \alpha)`, :math:`w' = w - \xi \nabla_w L_{train}(w,
    \alpha)`, on a softmax-mixed set of candidate operations, against DARTS' finite-difference
    Hessian-vector approximation and against central differences of the whole bilevel objective.
``popart``
    Meta-gradients w.r.t. ``log_lr`` and ``logit_beta`` through ``K = 1`` and ``K = 3`` inner steps with
    differentiable PopArt, against central differences, and every engine against ``func``.
``prop3``
    PopArt's Proposition 3: SGD with Pop-Art (Algorithm 1) and Normalized SGD (Algorithm 2,
    :func:`metaopt.popart.normalized_sgd_step`) give the same body parameters and predictions.

Vector quantities are reported by their L2 norms in the ``autograd``/``reference`` columns; the relative
error is that of the full vectors, :math:`\|a - r\|_2 / \|r\|_2`, unless the row's ``note`` says otherwise.
Rows with ``tolerance = inf`` are informational (always ``passed``): they show a contrast, not a criterion.

Example:
    >>> from metaopt.verify.catalogue import run_catalogue
    >>> rows = run_catalogue(["torchopt-toy"], ["func"])
    >>> [(r.quantity, round(r.autograd, 6), r.reference) for r in rows if r.quantity.endswith("analytic")]
    [('dL/dx vs analytic', -28.0, -28.0), ('dL/dlr vs analytic', -16.0, -16.0)]
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import ENGINES, InnerLoop, PopArtSpec, adapt
from metaopt.inner_optim import sgd
from metaopt.meta_params import MetaParameters
from metaopt.verify.core import check_gradients, relative_error

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "CheckResult",
    "available_engines",
    "run_catalogue",
    "check_torchopt_toy",
    "check_higher_toy",
    "check_darts",
    "check_popart",
    "check_prop3",
    "ToyNet",
    "torchopt_toy_meta_loss",
    "higher_toy_data",
    "higher_toy_model",
    "higher_toy_meta_loss",
    "DartsProblem",
    "make_darts_problem",
    "darts_val_loss",
    "darts_exact_hypergradient",
    "darts_fd_hypergradient",
    "HIGHER_TOY_PUBLISHED",
]

F64 = torch.float64

#: higher's printed results for its copy_initial_weights toy (6 decimals).
HIGHER_TOY_PUBLISHED = {"meta_loss": 0.011928, "grad_w0": -0.005311}
_PUBLISHED_HALF_ULP = 0.5e-6  # half a unit of the last printed digit


@dataclass(frozen=True)
class CheckResult:
    r"""One compared quantity.

    Attributes:
        check: Catalogue check name (e.g. ``"torchopt-toy"``).
        engine: Engine that computed ``autograd`` (``"func"``, ``"higher"``, ``"torchopt"``), ``"higher-raw"``
            for plain ``higher`` outside metaopt, or ``"-"`` when no engine is involved.
        quantity: What was compared, and against what.
        autograd: The value under test (L2 norm for vectors).
        reference: The independent value (L2 norm for vectors).
        rel_error: :math:`\|a - r\|_2 / \max(\|r\|_2, 10^{-12})` (or as stated in ``note``).
        tolerance: Pass threshold for ``rel_error`` (``inf`` for informational rows).
        passed: ``rel_error <= tolerance`` (False for NaN).
        note: How to read the row.
    """

    check: str
    engine: str
    quantity: str
    autograd: float
    reference: float
    rel_error: float
    tolerance: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _value(t: Tensor | float) -> float:
    t = torch.as_tensor(t, dtype=F64).detach()
    return float(t.reshape(())) if t.numel() == 1 else float(t.norm())


def _row(
    check: str, engine: str, quantity: str, actual: Tensor | float, reference: Tensor | float, tolerance: float,
    note: str = "",
) -> CheckResult:
    a, r = torch.as_tensor(actual, dtype=F64), torch.as_tensor(reference, dtype=F64)
    err = relative_error(a, r)
    return CheckResult(check, engine, quantity, _value(a), _value(r), err, tolerance, bool(err <= tolerance), note)


def available_engines() -> tuple[str, ...]:
    """Engines whose library is importable (``func`` always is)."""
    return tuple(e for e in ENGINES if e == "func" or importlib.util.find_spec(e) is not None)


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


# -------------------------------------------------------------------------------------------------- darts
class MixedOp(nn.Module):
    r"""A DARTS edge: :math:`\bar o(x) = \sum_i \operatorname{softmax}(\alpha)_i \, o_i(x; w)` over 4 candidates.

    Candidates on ``x`` of shape ``[n, d]`` (each returns ``[n]``): a linear map, a tanh MLP, a sine
    feature and a quadratic feature.
    """

    num_ops = 4

    def __init__(self, d: int = 2, hidden: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(d, 1)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.sine = nn.Linear(d, 1)
        self.quad = nn.Linear(d, 1, bias=False)

    def forward(self, x: Tensor, alpha: Tensor) -> Tensor:
        """Softmax(alpha)-weighted sum of the candidate outputs, shape ``[n]``."""
        ops = torch.stack([self.linear(x), self.mlp(x), torch.sin(self.sine(x)), self.quad(x**2)], -1)
        return (ops.squeeze(-2) * torch.softmax(alpha, -1)).sum(-1)


@dataclass
class DartsProblem:
    r"""A tiny bilevel regression: :math:`\min_\alpha L_{val}(w^*(\alpha), \alpha)`.

    Attributes:
        model: The mixed operation (weights ``w``).
        alpha: Architecture logits (leaf, requires grad).
        train: ``(x, y)`` training split.
        val: ``(x, y)`` validation split.
        xi: Inner step size :math:`\xi`.
    """

    model: MixedOp
    alpha: Tensor
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    xi: float

    def loss(self, params: dict[str, Tensor], split: tuple[Tensor, Tensor], alpha: Tensor) -> Tensor:
        """Mean squared error of the mixed op with weights ``params`` on ``split``."""
        x, y = split
        return ((functional_call(self.model, params, (x, alpha)) - y) ** 2).mean()


def make_darts_problem(seed: int = 0, n: int = 32, xi: float = 0.1) -> DartsProblem:
    """Random weights, logits and data for :class:`DartsProblem` (float64, own generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MixedOp().double()
    alpha = (0.5 * torch.randn(MixedOp.num_ops, generator=g, dtype=F64)).requires_grad_()

    def split() -> tuple[Tensor, Tensor]:
        x = torch.randn(n, 2, generator=g, dtype=F64)
        return x, torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.1 * torch.randn(n, generator=g, dtype=F64)

    return DartsProblem(model, alpha, split(), split(), xi)


def darts_val_loss(problem: DartsProblem, engine: str) -> Tensor:
    r"""The bilevel objective :math:`L_{val}(w - \xi \nabla_w L_{train}(w, \alpha), \alpha)`, inner step on ``engine``.

    The inner step uses the fixed rate :math:`\xi`; :math:`\alpha` enters the inner loss as data, so
    autograd differentiates through the inner gradient (the mixed second derivative).
    """
    inner = InnerLoop(lambda params, alpha, state: problem.loss(params, problem.train, alpha), steps=1)
    w1 = adapt(problem.model, inner, problem.alpha, MetaParameters(lr=problem.xi, dtype=F64), engine=engine).params
    return problem.loss(w1, problem.val, problem.alpha)


def darts_exact_hypergradient(problem: DartsProblem, engine: str) -> Tensor:
    r"""Exact one-step hypergradient :math:`\nabla_\alpha L_{val}(w', \alpha)` by autograd (see :func:`darts_val_loss`).

    Equals :math:`\nabla_\alpha L_{val}(w', \alpha) - \xi \nabla^2_{\alpha, w} L_{train}(w, \alpha)
    \nabla_{w'} L_{val}(w', \alpha)` with the partial gradients taken at fixed :math:`w'`.
    """
    return torch.autograd.grad(darts_val_loss(problem, engine), problem.alpha)[0]


def darts_fd_hypergradient(problem: DartsProblem, xi: float | None = None, scale: float = 0.01) -> Tensor:
    r"""DARTS' approximation (Liu et al. 2019, eq. 7–8) with plain autograd and no second derivatives.

    .. math::
        \nabla_\alpha L_{val}(w', \alpha) - \xi \frac{\nabla_\alpha L_{train}(w^+, \alpha)
        - \nabla_\alpha L_{train}(w^-, \alpha)}{2 \epsilon}, \quad
        w^\pm = w \pm \epsilon \nabla_{w'} L_{val}(w', \alpha), \quad
        \epsilon = \frac{0.01}{\|\nabla_{w'} L_{val}(w', \alpha)\|}

    with :math:`w' = w - \xi \nabla_w L_{train}(w, \alpha)`. ``xi=0`` is the first-order approximation
    :math:`\nabla_\alpha L_{val}(w, \alpha)`.

    Args:
        problem: The bilevel problem.
        xi: Inner step size (default: ``problem.xi``).
        scale: Numerator of :math:`\epsilon`.

    Returns:
        The approximate hypergradient, shape of ``alpha``.
    """
    xi = problem.xi if xi is None else xi
    alpha = problem.alpha.detach().requires_grad_()
    w = {n: p.detach().requires_grad_() for n, p in problem.model.named_parameters()}
    g_train = torch.autograd.grad(problem.loss(w, problem.train, alpha.detach()), list(w.values()))
    w1 = {n: (p - xi * g).detach().requires_grad_() for (n, p), g in zip(w.items(), g_train, strict=True)}
    d_alpha, *d_w1 = torch.autograd.grad(problem.loss(w1, problem.val, alpha), [alpha, *w1.values()])
    if xi == 0:
        return d_alpha
    eps = scale / float(torch.sqrt(torch.stack([(g**2).sum() for g in d_w1]).sum()))

    def grad_alpha_train(sign: float) -> Tensor:
        shifted = {n: p.detach() + sign * eps * v for (n, p), v in zip(w.items(), d_w1, strict=True)}
        return torch.autograd.grad(problem.loss(shifted, problem.train, alpha), alpha)[0]

    return d_alpha - xi * (grad_alpha_train(1.0) - grad_alpha_train(-1.0)) / (2 * eps)


def check_darts(engines: Sequence[str]) -> list[CheckResult]:
    r"""DARTS' one-step hypergradient on each engine against the FD-HVP approximation and plain FD.

    The finite-difference Hessian-vector product has an :math:`O(\epsilon^2)` error (about 1e-8 relative
    here), so that row is held to 1e-6. The first-order row (:math:`\xi = 0`) is informational: its error is
    the size of the second-order term DARTS keeps, expected to be large; it is reported with
    ``tolerance = inf`` and always passes.
    """
    name, rows = "darts", []
    problem = make_darts_problem()
    approx, first = darts_fd_hypergradient(problem), darts_fd_hypergradient(problem, xi=0.0)
    for engine in engines:
        exact = darts_exact_hypergradient(problem, engine)
        fd = check_gradients(lambda: darts_val_loss(problem, engine),  # noqa: B023
                             {"alpha": problem.alpha}, eps=1e-6)["alpha"].reference
        rows += [
            _row(name, engine, "dLval/dalpha vs DARTS FD-HVP", exact, approx, 1e-6,
                 "xi=0.1, eps=0.01/||grad_w' Lval||; L2 norms of the 4-vector"),
            _row(name, engine, "dLval/dalpha vs central FD", exact, fd, 1e-6, "FD of the bilevel objective"),
            _row(name, engine, "first-order (xi=0) vs exact", first, exact, math.inf,
                 "informational, not a pass/fail criterion: the dropped second-order term"),
        ]
    return rows


# ------------------------------------------------------------------------------------------------- popart
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

    spec = PopArtSpec("value.weight", "value.bias", targets=lambda params, batch, state: batch["y"])
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


# ------------------------------------------------------------------------------------------------ runner
CHECKS: dict[str, Callable[[Sequence[str]], list[CheckResult]]] = {
    "torchopt-toy": check_torchopt_toy,
    "higher-toy": check_higher_toy,
    "darts": check_darts,
    "popart": check_popart,
    "prop3": check_prop3,
}
CHECK_NAMES: tuple[str, ...] = tuple(CHECKS)


def run_catalogue(checks: Sequence[str] | None = None, engines: Sequence[str] | None = None) -> list[CheckResult]:
    """Run catalogue checks on the given engines.

    Args:
        checks: Check names from :data:`CHECK_NAMES` (default: all).
        engines: Engines from :data:`metaopt.engines.ENGINES` (default: every installed one).

    Returns:
        The result rows of every check, in catalogue order.

    Raises:
        ValueError: an unknown check or engine name, or an engine whose library is not installed.
    """
    checks = list(CHECK_NAMES if checks is None else checks)
    engines = list(available_engines() if engines is None else engines)
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        raise ValueError(f"checks: unknown {bad}; allowed: {list(CHECK_NAMES)}")
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise ValueError(f"engines: unknown {bad}; allowed: {list(ENGINES)}")
    missing = [e for e in engines if e not in available_engines()]
    if missing:
        raise ValueError(f"engines: {missing} not installed (pip install 'metaopt[{missing[0]}]')")
    with torch.random.fork_rng(devices=[]):
        return [row for c in checks for row in CHECKS[c](engines)]
