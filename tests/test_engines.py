"""Cross-engine equality, finite-difference and analytic checks of meta-gradients (float64)."""

from __future__ import annotations

import sys

import pytest
import torch
from _toy import make_inner, make_model, make_tasks, outer_loss
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import ENGINES, InnerLoop, adapt, adapt_vmap
from metaopt.inner_optim import InnerOptimizer
from metaopt.meta_params import MetaParameters
from metaopt.verify import check_gradients, relative_error

NUM_TASKS = 3


def split(tasks, t):
    return {"x": tasks["x"][t, 0], "y": tasks["y"][t, 0]}, {"x": tasks["x"][t, 1], "y": tasks["y"][t, 1]}


def meta_objective(model, meta, inner, tasks, engine, popart=True):
    total = 0.0
    for t in range(NUM_TASKS):
        inb, outb = split(tasks, t)
        state = pa.init(1, dtype=torch.float64) if popart else None
        r = adapt(model, inner, inb, meta, engine=engine, popart_state=state)
        total = total + outer_loss(model, r.params, outb, r.popart_state)
    return total


def meta_grads(engine, steps, popart=True, **kw):
    model, tasks = make_model(), make_tasks(NUM_TASKS)
    meta = MetaParameters(lr=0.05, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    inner = make_inner(model, popart=popart, steps=steps, **kw)
    loss = meta_objective(model, meta, inner, tasks, engine, popart)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()) + [meta.log_lr, meta.logit_beta], allow_unused=True)
    out = dict(zip(names + ["log_lr", "logit_beta"], grads, strict=True))
    return {k: (torch.zeros(()) if v is None else v) for k, v in out.items()}


OPTIMIZERS = {"sgd": {}, "momentum": {"momentum": 0.9}, "adam": {"kind": "adam", "eps": 1e-3}}
MODES = {"full": {}, "first_order": {"first_order": True}, "truncated": {"truncate": 1}}


@pytest.mark.parametrize("weight_targets", [False, True], ids=["fixed-targets", "weight-targets"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 3])
def test_engines_agree(steps, opt, mode, weight_targets):
    # One semantics, one driver: every engine gives the func engine's meta-gradients to 1e-8 (float64), including
    # ART targets that depend on the fast weights (which made the engines disagree by 5e-4 before).
    kw = OPTIMIZERS[opt] | MODES[mode] | {"weight_targets": weight_targets}
    ref = meta_grads("func", steps, **kw)
    assert float(ref["logit_beta"].abs()) > 0 and float(ref["log_lr"].abs()) > 0
    for engine in ("higher", "torchopt"):
        got = meta_grads(engine, steps, **kw)
        for name in ref:
            assert relative_error(got[name], ref[name]) <= 1e-8, (engine, name)


@pytest.mark.parametrize("engine", ENGINES)
def test_inner_gradient_holds_the_statistics_constant(engine):
    # PopArt's Algorithm 1: after ART and POP, the inner step follows the gradient of the normalized loss with
    # the new statistics held constant -- even when the ART targets depend on the weights. Reference by hand.
    model, tasks = make_model(), make_tasks(1)
    inb, _ = split(tasks, 0)
    meta = MetaParameters(lr=0.05, beta=0.3, dtype=torch.float64)
    inner = make_inner(model, steps=1, weight_targets=True)
    res = adapt(model, inner, inb, meta, engine=engine, popart_state=pa.init(1, dtype=torch.float64))
    p0 = {n: t.detach().clone() for n, t in model.named_parameters()}
    s0 = pa.init(1, dtype=torch.float64)
    s1 = pa.art(s0, inner.popart.targets(p0, inb, s0), 0.3)
    p0["value.weight"], p0["value.bias"] = pa.pop(p0["value.weight"], p0["value.bias"], s0, s1)
    p0 = {n: t.requires_grad_() for n, t in p0.items()}
    g = torch.autograd.grad(inner.loss(p0, inb, pa.PopArtState(*(t.detach() for t in s1))), list(p0.values()))
    for (n, p), gi in zip(p0.items(), g, strict=True):
        assert relative_error(res.params[n], p - 0.05 * gi) <= 1e-12, n
    # ... and differs from the gradient that also moves the statistics through the weights (so the test can fail).
    p_all = {n: t.detach().clone().requires_grad_() for n, t in model.named_parameters()}
    s1_all = pa.art(s0, inner.popart.targets(p_all, inb, s0), 0.3)
    w, b = pa.pop(p_all["value.weight"], p_all["value.bias"], s0, s1_all)
    g_all = torch.autograd.grad(inner.loss(p_all | {"value.weight": w, "value.bias": b}, inb, s1_all),
                                p_all["body.0.weight"])[0]
    assert relative_error(g_all, g[0]) > 1e-3


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradients_match_finite_differences(engine, steps):
    model, tasks = make_model(), make_tasks(NUM_TASKS)
    meta = MetaParameters(lr=0.05, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    inner = make_inner(model, steps=steps, momentum=0.5 if steps == 3 else 0.0)
    inputs = dict(model.named_parameters()) | {"log_lr": meta.log_lr, "logit_beta": meta.logit_beta}
    report = check_gradients(lambda: meta_objective(model, meta, inner, tasks, engine), inputs, eps=1e-5, rtol=1e-6)
    assert report.passed, report.table()


def test_adam_func_matches_finite_differences():
    model, tasks = make_model(), make_tasks(NUM_TASKS)
    meta = MetaParameters(lr=0.01, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    inner = make_inner(model, steps=2, kind="adam", eps=1e-3)
    inputs = dict(model.named_parameters()) | {"log_lr": meta.log_lr, "logit_beta": meta.logit_beta}
    report = check_gradients(lambda: meta_objective(model, meta, inner, tasks, "func"), inputs, rtol=1e-6)
    assert report.passed, report.table()


@pytest.mark.parametrize("engine", ENGINES)
def test_adam_meta_gradient_finite_at_zero_gradient(engine):
    # A parameter whose inner gradient is exactly zero: the loss ignores the bias of a dead unit.
    model = make_model()
    with torch.no_grad():
        model.body[0].weight[0].zero_()
        model.body[0].bias[0] = 0.0
        model.value.weight[0, 0] = 0.0  # unit 0 has zero output and zero gradient everywhere
    meta = MetaParameters(lr=0.01, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    inner = make_inner(model, steps=2, kind="adam", eps=1e-8)
    loss = meta_objective(model, meta, inner, make_tasks(NUM_TASKS), engine)
    grads = torch.autograd.grad(loss, list(model.parameters()) + [meta.log_lr, meta.logit_beta])
    assert all(torch.isfinite(g).all() for g in grads)


def test_vmap_equals_python_loop():
    model, tasks = make_model(), make_tasks(NUM_TASKS)
    meta = MetaParameters(lr=0.05, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    inner = make_inner(model, steps=3, momentum=0.9)
    states = pa.PopArtState(*(t.expand(NUM_TASKS, 1).clone() for t in pa.init(1, dtype=torch.float64)))
    inner_batches = {"x": tasks["x"][:, 0], "y": tasks["y"][:, 0]}
    res = adapt_vmap(model, inner, inner_batches, meta, popart_state=states)
    outer = torch.func.vmap(lambda p, s, b: outer_loss(model, p, b, pa.PopArtState(*s)))(
        res.params, tuple(res.popart_state), {"x": tasks["x"][:, 1], "y": tasks["y"][:, 1]}
    ).sum()
    ps = list(model.parameters()) + [meta.log_lr, meta.logit_beta]
    g_vmap = torch.autograd.grad(outer, ps)
    g_loop = torch.autograd.grad(meta_objective(model, meta, inner, tasks, "func"), ps)
    for a, b in zip(g_vmap, g_loop, strict=True):
        assert relative_error(a, b) <= 1e-10


def test_first_order_equals_analytic_first_order():
    # First-order MAML: d outer / d theta0 = grad of the outer loss at the adapted weights (K steps of SGD, no
    # second-order terms), and d outer / d lr = -sum_k g_k . grad_outer (g_k the inner gradients).
    model, tasks = make_model(), make_tasks(1)
    inb, outb = split(tasks, 0)
    meta = MetaParameters(lr=0.05, learn=("lr",), dtype=torch.float64)
    inner = make_inner(model, popart=False, steps=3, first_order=True)
    for engine in ENGINES:
        res = adapt(model, inner, inb, meta, engine=engine)
        loss = outer_loss(model, res.params, outb, None)
        g = torch.autograd.grad(loss, list(model.parameters()) + [meta.log_lr])
        # Reference by hand: plain SGD on detached copies.
        p = {n: t.detach().clone() for n, t in model.named_parameters()}
        inner_grads = []
        for _ in range(3):
            p = {n: t.requires_grad_() for n, t in p.items()}
            gk = torch.autograd.grad(inner.loss(p, inb, None), list(p.values()))
            inner_grads.append(gk)
            p = {n: (t - 0.05 * gi).detach() for (n, t), gi in zip(p.items(), gk, strict=True)}
        p = {n: t.requires_grad_() for n, t in p.items()}
        g_out = torch.autograd.grad(outer_loss(model, p, outb, None), list(p.values()))
        for a, b in zip(g[:-1], g_out, strict=True):
            assert relative_error(a, b) <= 1e-12, engine
        d_lr = -sum(float((gi * go).sum()) for gk in inner_grads for gi, go in zip(gk, g_out, strict=True))
        assert abs(float(g[-1]) - d_lr * 0.05) <= 1e-10 * abs(d_lr * 0.05), engine  # chain rule through log_lr


def _quadratic_problem(steps, truncate):
    # L(theta) = 0.5 theta^T A theta - c^T theta, outer 0.5 ||theta_K - t||^2; closed-form Jacobians.
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, generator=g, dtype=torch.float64)
    a = m @ m.T / 4 + torch.eye(4, dtype=torch.float64)
    c = torch.randn(4, generator=g, dtype=torch.float64)
    target = torch.randn(4, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=g, dtype=torch.float64))

    def loss(params, batch, state):
        th = params["weight"][0]
        return 0.5 * th @ a @ th - c @ th

    inner = InnerLoop(loss, steps=steps, truncate=truncate)
    return model, a, c, target, inner


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("truncate", [0, 1, 2, 4])
def test_truncation_cuts_exactly_the_first_steps(engine, truncate):
    steps, eta = 4, 0.1
    model, a, c, target, inner = _quadratic_problem(steps, truncate)
    meta = MetaParameters(lr=eta, learn=("lr",), dtype=torch.float64)
    res = adapt(model, inner, None, meta, engine=engine)
    th_k = res.params["weight"][0]
    outer = 0.5 * ((th_k - target) ** 2).sum()
    g_theta, g_loglr = torch.autograd.grad(outer, [model.weight, meta.log_lr], allow_unused=True)
    g_loglr = torch.zeros(()) if g_loglr is None else g_loglr
    # Analytic: trajectory, d theta_K / d theta_0 = B^truncate (B = I - eta A; identity through earlier steps),
    # d theta_K / d eta = sum over the last `truncate` steps j of B^(K-1-j) (-(A theta_j - c)).
    b = torch.eye(4, dtype=torch.float64) - eta * a
    thetas = [model.weight.detach()[0]]
    for _ in range(steps):
        thetas.append(b @ thetas[-1] + eta * c)
    r = thetas[-1] - target
    jac = torch.linalg.matrix_power(b, truncate)
    d_eta = sum(
        torch.linalg.matrix_power(b, steps - 1 - j) @ -(a @ thetas[j] - c) for j in range(steps - truncate, steps)
    )
    d_eta = torch.as_tensor(d_eta, dtype=torch.float64)
    assert relative_error(g_theta[0], jac.T @ r) <= 1e-10
    expected_loglr = float(r @ d_eta) * eta if truncate else 0.0
    assert abs(float(g_loglr) - expected_loglr) <= 1e-10 * max(1.0, abs(expected_loglr))


def test_truncate_all_steps_equals_full():
    full = meta_grads("func", 3)
    trunc = meta_grads("func", 3, truncate=3)
    for name in full:
        assert relative_error(trunc[name], full[name]) <= 1e-14


@pytest.mark.parametrize("engine", ENGINES)
def test_per_parameter_learning_rates(engine):
    model, tasks = make_model(), make_tasks(NUM_TASKS)
    names = [n for n, _ in model.named_parameters()]
    meta = MetaParameters(lr=0.05, beta=0.3, learn=("lr", "beta"), per_parameter=names, dtype=torch.float64)
    inner = make_inner(model, steps=2)
    inputs = {f"lr[{n}]": meta.log_lrs[n.replace(".", "__")] for n in names} | {"logit_beta": meta.logit_beta}
    report = check_gradients(lambda: meta_objective(model, meta, inner, tasks, engine), inputs, rtol=1e-6)
    assert report.passed, report.table()


def test_popart_preserves_outputs_inside_each_engine():
    # Before the first gradient step, ART + POP on fast weights must leave unnormalized predictions unchanged.
    model, tasks = make_model(), make_tasks(1)
    inb, _ = split(tasks, 0)
    meta = MetaParameters(lr=1e-12, beta=0.5, dtype=torch.float64)
    inner = make_inner(model, steps=1)
    before = functional_call(model, dict(model.named_parameters()), (inb["x"],))
    for engine in ENGINES:
        res = adapt(model, inner, inb, meta, engine=engine, popart_state=pa.init(1, dtype=torch.float64))
        after = pa.unnormalize(res.popart_state, functional_call(model, res.params, (inb["x"],)))
        assert relative_error(after, before) <= 1e-9, engine
        assert float(res.popart_state.mu[0]) != 0.0


def test_torchopt_engine_restores_module():
    model = make_model()
    before = {n: p for n, p in model.named_parameters()}
    meta = MetaParameters(lr=0.05, beta=0.3, dtype=torch.float64)
    inb, _ = split(make_tasks(1), 0)
    adapt(model, make_inner(model, steps=2), inb, meta, engine="torchopt", popart_state=pa.init(1, dtype=torch.float64))
    after = dict(model.named_parameters())
    assert all(after[n] is before[n] for n in before)
    assert all(isinstance(p, torch.nn.Parameter) for p in after.values())


def test_bad_inputs():
    model = make_model()
    meta = MetaParameters(dtype=torch.float64)
    inner = make_inner(model)
    with pytest.raises(ValueError, match="engine must be one of .* got 'jax'"):
        adapt(model, inner, None, meta, engine="jax", popart_state=pa.init(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="popart_state must be given"):
        adapt(model, inner, None, meta)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        make_inner(model, steps=0)
    with pytest.raises(ValueError, match=r"truncate \(steps=2\) must be None or an int in \[0, 2\], got 3"):
        make_inner(model, steps=2, truncate=3)
    with pytest.raises(ValueError, match=r"optimizer kind must be one of \('sgd', 'adam'\), got 'rmsprop'"):
        InnerLoop(lambda p, b, s: 0, optimizer=InnerOptimizer("rmsprop"))
    with pytest.raises(ValueError, match="lr must be positive and finite, got -0.1"):
        MetaParameters(lr=-0.1)
    with pytest.raises(ValueError, match=r"beta must lie in the open interval \(0, 1\), got 1.0"):
        MetaParameters(beta=1.0)
    with pytest.raises(ValueError, match="learn must be a subset"):
        MetaParameters(learn=("momentum",))


@pytest.mark.parametrize("engine", ["higher", "torchopt"])
def test_missing_engine_library_message(monkeypatch, engine):
    monkeypatch.setitem(sys.modules, engine, None)  # makes `import engine` raise ImportError
    model = make_model()
    with pytest.raises(ImportError, match=rf"engine='{engine}' needs .* pip install 'metaopt-torch\[{engine}\]'"):
        adapt(model, make_inner(model), None, MetaParameters(dtype=torch.float64), engine=engine,
              popart_state=pa.init(1, dtype=torch.float64))
