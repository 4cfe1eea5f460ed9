"""Tests for the differentiable PopArt core (metaopt.popart).

Every numeric check compares the library against an independent reference: a plain-Python float64
loop of the textbook mu/nu recursion, the closed-form POP / Proposition-3 identities, analytic
derivatives, finite differences (gradcheck) or torch.optim.
"""

from __future__ import annotations

import copy
import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from metaopt import popart
from metaopt.popart import PopArtHead, PopArtState

F64 = torch.float64
F32 = torch.float32


# ----------------------------------------------------------------------------------------------------------
# Independent references (plain Python floats, float64)
# ----------------------------------------------------------------------------------------------------------


def textbook_art(mu: float, sigma: float, batches, beta: float, *, debias: bool = False, t0: int = 0):
    """Textbook ART: mu/nu EMAs of Y and Y^2 (batch means per step); returns per-step (mu, sigma)."""
    nu = sigma * sigma + mu * mu
    out = []
    t = t0
    for batch in batches:
        ys = [float(v) for v in (batch if isinstance(batch, (list, tuple)) else [batch])]
        t += 1
        b = beta / (1.0 - (1.0 - beta) ** t) if debias else beta
        m1 = sum(ys) / len(ys)
        m2 = sum(y * y for y in ys) / len(ys)
        mu = (1.0 - b) * mu + b * m1
        nu = (1.0 - b) * nu + b * m2
        out.append((mu, math.sqrt(max(nu - mu * mu, 0.0))))
    return out


def unnorm_outputs(weight, bias, mu, sigma, h, rows_stats=None):
    """f(x) = sigma * (W h + b) + mu for each row, evaluated by hand."""
    n = h @ weight.T + bias
    if rows_stats is not None:
        mu, sigma = mu[rows_stats], sigma[rows_stats]
    return sigma * n + mu


def random_state(k: int, scale: float, dtype, gen: torch.Generator) -> PopArtState:
    mu = scale * 3.0 * torch.randn(k, dtype=F64, generator=gen)
    sigma = scale * torch.exp(torch.randn(k, dtype=F64, generator=gen))
    count = torch.randint(0, 50, (k,), generator=gen).to(F64)
    return PopArtState(mu.to(dtype), sigma.to(dtype), count.to(dtype))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(F64), b.to(F64)
    return ((a - b).abs().max() / b.abs().max()).item()


SCALES = [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8]
TOL = {F64: 1e-10, F32: 1e-5}


# ----------------------------------------------------------------------------------------------------------
# 1. POP preserves outputs
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("variant", ["single", "multi", "task_ids"])
def test_pop_preserves_outputs(scale, dtype, variant):
    gen = torch.Generator().manual_seed(100 * ["single", "multi", "task_ids"].index(variant) + SCALES.index(scale))
    in_features, n_inputs = 8, 256
    k = {"single": 1, "multi": 3, "task_ids": 4}[variant]
    bounds = {"sigma_min": scale * 1e-4, "sigma_max": scale * 1e4}
    for _trial in range(3):
        old = random_state(k, scale, dtype, gen)
        if variant == "task_ids":
            # 6 head rows that share 4 statistics; the batch updates tasks 0..2 only.
            row_ids = torch.tensor([0, 1, 2, 3, 1, 2])
            tids = torch.randint(0, 3, (16,), generator=gen)
            targets = (old.mu.to(F64)[tids] + 5 * scale * torch.randn(16, dtype=F64, generator=gen)).to(dtype)
            new = popart.art(old, targets, 0.3, task_ids=tids, **bounds)
        else:
            row_ids = None
            targets = (old.mu.to(F64) + 5 * scale * torch.randn(16, k, dtype=F64, generator=gen)).to(dtype)
            if k == 1:
                targets = targets.squeeze(-1)
            new = popart.art(old, targets, 0.3, **bounds)
        rows = k if row_ids is None else row_ids.numel()
        w = (torch.randn(rows, in_features, dtype=F64, generator=gen) / math.sqrt(in_features)).to(dtype)
        b = torch.randn(rows, dtype=F64, generator=gen).to(dtype)
        h = torch.randn(n_inputs, in_features, dtype=F64, generator=gen).to(dtype)

        w2, b2 = popart.pop(w, b, old, new, task_ids=row_ids)
        assert w2.dtype == dtype and b2.dtype == dtype
        assert not torch.equal(new.mu, old.mu)  # ART really moved the statistics
        before = unnorm_outputs(w, b, old.mu, old.sigma, h, row_ids)
        after = unnorm_outputs(w2, b2, new.mu, new.sigma, h, row_ids)
        assert rel_err(after, before) <= TOL[dtype]
        # the normalized outputs do change (otherwise the check above would be vacuous)
        assert rel_err(h @ w2.T + b2, h @ w.T + b) > 1e-3


def test_pop_formula_by_hand():
    w = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=F64)
    b = torch.tensor([3.0, -1.0], dtype=F64)
    old = PopArtState(
        torch.tensor([1.0, 10.0], dtype=F64), torch.tensor([2.0, 5.0], dtype=F64), torch.zeros(2, dtype=F64)
    )
    new = PopArtState(
        torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([4.0, 1.0], dtype=F64), torch.ones(2, dtype=F64)
    )
    w2, b2 = popart.pop(w, b, old, new)
    # W' = sigma/sigma' W ; b' = (sigma b + mu - mu') / sigma'
    assert w2.tolist() == [[0.5, -1.0], [2.5, 20.0]]
    assert b2.tolist() == [(2 * 3 + 1 - 2) / 4, (5 * -1 + 10 - 0) / 1]


# ----------------------------------------------------------------------------------------------------------
# 2. float32 numerical stability (targets 1e4 +- 1)
# ----------------------------------------------------------------------------------------------------------


def test_float32_statistics_stable_on_large_offset_targets():
    beta, steps = 1e-2, 20000
    gen = torch.Generator().manual_seed(0)
    ys = (1e4 + (2 * torch.rand(steps, dtype=F64, generator=gen) - 1)).to(F32)

    state = popart.init(1, dtype=F32)
    mus, sigmas = [], []
    for y in ys:
        state = popart.art(state, y, beta)
        mus.append(state.mu)
        sigmas.append(state.sigma)
    mus, sigmas = torch.cat(mus).to(F64), torch.cat(sigmas).to(F64)

    ref = textbook_art(0.0, 1.0, ys.to(F64).tolist(), beta)  # float64 reference on the same float32 targets
    ref_mu = torch.tensor([m for m, _ in ref], dtype=F64)
    ref_sigma = torch.tensor([s for _, s in ref], dtype=F64)

    assert bool((sigmas > popart.DEFAULT_SIGMA_MIN).all()), "float32 sigma collapsed to the clip bound"
    assert ((sigmas - ref_sigma).abs() / ref_sigma).max().item() < 1e-2
    assert ((mus - ref_mu).abs() / ref_mu.abs()).max().item() < 1e-5
    # Late steps: the true std of U(-1, 1) is 1/sqrt(3); float32 tracks it.
    assert abs(sigmas[-5000:].mean().item() - 1 / math.sqrt(3)) < 0.1

    # The failure mode the centered recursion avoids: the naive nu - mu^2 in float32 cancels
    # catastrophically and is non-positive on many steps.
    b32, one = np.float32(beta), np.float32(1.0)
    mu32, nu32 = np.float32(0.0), np.float32(1.0)
    non_positive = 0
    naive_var = []
    for y in ys.numpy():
        mu32 = (one - b32) * mu32 + b32 * y
        nu32 = (one - b32) * nu32 + b32 * y * y
        var = nu32 - mu32 * mu32
        naive_var.append(float(var))
        non_positive += bool(var <= 0)
    assert non_positive > steps // 4, non_positive
    # ... and where it is positive it is far from the float64 value.
    late = np.array(naive_var[-5000:])
    assert np.abs(late - ref_sigma[-5000:].numpy() ** 2).max() > 1.0


# ----------------------------------------------------------------------------------------------------------
# 3. ART against the textbook recursion
# ----------------------------------------------------------------------------------------------------------


def test_art_single_targets_match_textbook():
    gen = torch.Generator().manual_seed(1)
    ys = (50 + 30 * torch.randn(200, dtype=F64, generator=gen)).tolist()
    beta = 0.05
    state = popart.init(1, dtype=F64)
    ref = textbook_art(0.0, 1.0, ys, beta)
    for y, (rm, rs) in zip(ys, ref, strict=True):
        state = popart.art(state, torch.tensor(y, dtype=F64), beta)
        assert state.mu.item() == pytest.approx(rm, rel=1e-12, abs=1e-12)
        assert state.sigma.item() == pytest.approx(rs, rel=1e-10)
    assert state.count.item() == 200


def test_art_batches_match_nu_form_with_batch_means():
    gen = torch.Generator().manual_seed(2)
    beta = 0.2
    state = popart.init(1, dtype=F64)
    batches = [
        (100 + 20 * torch.randn(int(n), dtype=F64, generator=gen)) for n in torch.randint(1, 9, (40,), generator=gen)
    ]
    ref = textbook_art(0.0, 1.0, [bt.tolist() for bt in batches], beta)
    for bt, (rm, rs) in zip(batches, ref, strict=True):
        state = popart.art(state, bt, beta)
        assert state.mu.item() == pytest.approx(rm, rel=1e-12)
        assert state.sigma.item() == pytest.approx(rs, rel=1e-10)
    # one batch step is NOT the same as feeding the batch's targets one at a time
    s_seq = popart.init(1, dtype=F64)
    for y in batches[0]:
        s_seq = popart.art(s_seq, y, beta)
    s_batch = popart.art(popart.init(1, dtype=F64), batches[0], beta)
    if batches[0].numel() > 1:
        assert not torch.allclose(s_seq.mu, s_batch.mu)


def test_art_multi_output_batches_with_per_output_beta():
    gen = torch.Generator().manual_seed(3)
    k = 3
    betas = [0.1, 0.3, 0.02]
    beta_t = torch.tensor(betas, dtype=F64)
    offsets = torch.tensor([0.0, 1e3, -1e5], dtype=F64)
    batches = [
        offsets + torch.randn(5, k, dtype=F64, generator=gen) * torch.tensor([1.0, 10.0, 100.0]) for _ in range(30)
    ]
    state = popart.init(k, dtype=F64)
    for bt in batches:
        state = popart.art(state, bt, beta_t)
    for j in range(k):
        rm, rs = textbook_art(0.0, 1.0, [bt[:, j].tolist() for bt in batches], betas[j])[-1]
        assert state.mu[j].item() == pytest.approx(rm, rel=1e-12)
        assert state.sigma[j].item() == pytest.approx(rs, rel=1e-9)


def test_art_task_ids_independent_statistics():
    gen = torch.Generator().manual_seed(4)
    k, beta = 3, 0.1
    scales = torch.tensor([1.0, 100.0, 1e4], dtype=F64)
    state = popart.init(k, dtype=F64)
    per_task_batches: list[list[list[float]]] = [[] for _ in range(k)]
    for _ in range(40):
        tids = torch.randint(0, 2, (6,), generator=gen)  # task 2 never gets targets
        ys = scales[tids] * (3 + torch.randn(6, dtype=F64, generator=gen))
        old = state
        state = popart.art(old, ys, beta, task_ids=tids)
        # untouched outputs keep their statistics bit for bit
        for j in range(k):
            if not bool((tids == j).any()):
                assert state.mu[j].item() == old.mu[j].item()
                assert state.sigma[j].item() == old.sigma[j].item()
                assert state.count[j].item() == old.count[j].item()
            else:
                per_task_batches[j].append(ys[tids == j].tolist())
    assert state.mu[2].item() == 0.0 and state.sigma[2].item() == 1.0 and state.count[2].item() == 0.0
    for j in range(2):
        rm, rs = textbook_art(0.0, 1.0, per_task_batches[j], beta)[-1]
        assert state.mu[j].item() == pytest.approx(rm, rel=1e-12)
        assert state.sigma[j].item() == pytest.approx(rs, rel=1e-9)
        assert state.count[j].item() == len(per_task_batches[j])


def test_art_task0_updates_never_touch_task1_and_equal_single_output_run():
    gen = torch.Generator().manual_seed(5)
    beta = 0.25
    multi = PopArtState(
        torch.tensor([3.0, -7.0], dtype=F64), torch.tensor([2.0, 0.5], dtype=F64), torch.tensor([4.0, 9.0], dtype=F64)
    )
    single = PopArtState(multi.mu[:1].clone(), multi.sigma[:1].clone(), multi.count[:1].clone())
    task1 = (multi.mu[1].item(), multi.sigma[1].item(), multi.count[1].item())
    for _ in range(25):
        ys = 10 * torch.randn(4, dtype=F64, generator=gen)
        multi = popart.art(multi, ys, beta, task_ids=torch.zeros(4, dtype=torch.long))
        single = popart.art(single, ys, beta)
        assert (multi.mu[1].item(), multi.sigma[1].item(), multi.count[1].item()) == task1
        assert multi.mu[0].item() == single.mu[0].item()
        assert multi.sigma[0].item() == pytest.approx(single.sigma[0].item(), rel=1e-14)
        assert multi.count[0].item() == single.count[0].item()


def test_art_debias_matches_textbook_debiased_step():
    gen = torch.Generator().manual_seed(6)
    beta = 0.05
    k = 2
    state = popart.init(k, dtype=F64)
    seqs: list[list[float]] = [[], []]
    for _ in range(60):
        tid = int(torch.randint(0, k, (1,), generator=gen))
        y = float(200 + 40 * torch.randn(1, dtype=F64, generator=gen))
        seqs[tid].append(y)
        state = popart.art(
            state, torch.tensor([y], dtype=F64), beta, task_ids=torch.tensor([tid]), debias=True, sigma_min=1e-12
        )
    for j in range(k):
        rm, rs = textbook_art(0.0, 1.0, seqs[j], beta, debias=True)[-1]
        assert state.mu[j].item() == pytest.approx(rm, rel=1e-12)
        assert state.sigma[j].item() == pytest.approx(rs, rel=1e-8)
    # debias at t=1 gives beta_1 = 1: mu is the first target exactly (no bias towards the initial 0)
    s1 = popart.art(popart.init(1, dtype=F64), torch.tensor(123.0, dtype=F64), 1e-3, debias=True)
    assert s1.mu.item() == pytest.approx(123.0, rel=1e-12)
    s1_biased = popart.art(popart.init(1, dtype=F64), torch.tensor(123.0, dtype=F64), 1e-3)
    assert s1_biased.mu.item() == pytest.approx(0.123, rel=1e-12)


def test_art_sigma_clipping_bounds_and_zero_gradient():
    lo, hi = popart.DEFAULT_SIGMA_MIN, popart.DEFAULT_SIGMA_MAX
    # lower bound: sigma'^2 = (1 - beta) sigma^2 = 0.5 lo^2 < lo^2
    beta = torch.tensor(0.5, dtype=F64, requires_grad=True)
    s = PopArtState(torch.zeros(1, dtype=F64), torch.full((1,), lo, dtype=F64), torch.zeros(1, dtype=F64))
    with pytest.warns(popart.SigmaClipWarning, match="sigma_min=1e-06"):
        new = popart.art(s, torch.zeros(1, dtype=F64), beta)
    assert new.sigma.item() == lo
    (g,) = torch.autograd.grad(new.sigma.sum(), beta)
    assert g.item() == 0.0
    # just above the bound: not clipped, value from the textbook formula
    new_ok = popart.art(s, torch.zeros(1, dtype=F64), 0.5, sigma_min=lo / 10)
    assert new_ok.sigma.item() == pytest.approx(math.sqrt(0.5) * lo, rel=1e-12)
    # upper bound: sigma'^2 = 0.5 (1 + 0.5 Y^2) with Y = 1e11 gives sigma' = 5e10 > hi
    with pytest.warns(popart.SigmaClipWarning, match="sigma_max=1e\\+10"):
        new_hi = popart.art(popart.init(1, dtype=F64), torch.tensor([1e11], dtype=F64), 0.5)
    assert new_hi.sigma.item() == hi
    new_hi2 = popart.art(popart.init(1, dtype=F64), torch.tensor([1e11], dtype=F64), 0.5, sigma_max=1e12)
    assert new_hi2.sigma.item() == pytest.approx(math.sqrt(0.5 * (1 + 0.5 * 1e22)), rel=1e-12)
    # custom bounds on a long run of constant targets: sigma never leaves [sigma_min, sigma_max]
    st = popart.init(1, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(100):
            st = popart.art(st, torch.tensor(5.0, dtype=F64), 0.3, sigma_min=1e-3, sigma_max=2.0)
            assert 1e-3 <= st.sigma.item() <= 2.0
    assert st.sigma.item() == 1e-3
    # sigma first overshoots (clipped to 2), then decays onto 1e-3: both bounds warned about
    messages = {str(w.message).split(":")[0] for w in caught if issubclass(w.category, popart.SigmaClipWarning)}
    assert messages == {
        "metaopt.popart.art clipped sigma to sigma_max=2",
        "metaopt.popart.art clipped sigma to sigma_min=0.001",
    }


def test_art_stop_gradient_and_analytic_gradients():
    mu0, sig0, y = 2.0, 3.0, 10.0
    old = PopArtState(torch.tensor([mu0], dtype=F64), torch.tensor([sig0], dtype=F64), torch.zeros(1, dtype=F64))

    beta = torch.tensor(0.2, dtype=F64, requires_grad=True)
    target = torch.tensor([y], dtype=F64, requires_grad=True)
    stopped = popart.art(old, target, beta, stop_gradient=True)
    assert not stopped.mu.requires_grad and not stopped.sigma.requires_grad
    assert stopped.mu.grad_fn is None and stopped.sigma.grad_fn is None

    new = popart.art(old, target, beta)
    # same values either way
    assert torch.equal(new.mu.detach(), stopped.mu) and torch.equal(new.sigma.detach(), stopped.sigma)
    gmu_b, gmu_y = torch.autograd.grad(new.mu.sum(), [beta, target], retain_graph=True)
    gs_b, gs_y = torch.autograd.grad(new.sigma.sum(), [beta, target])
    b, d = 0.2, y - mu0
    s_new = math.sqrt((1 - b) * (sig0**2 + b * d * d))
    assert gmu_b.item() == pytest.approx(d, rel=1e-12)  # d mu'/d beta = Y - mu
    assert gmu_y.item() == pytest.approx(b, rel=1e-12)  # d mu'/d Y = beta
    assert gs_b.item() == pytest.approx((-(sig0**2 + b * d * d) + (1 - b) * d * d) / (2 * s_new), rel=1e-12)
    assert gs_y.item() == pytest.approx((1 - b) * b * d / s_new, rel=1e-12)
    assert gs_b.item() != 0.0 and gs_y.item() != 0.0


# ----------------------------------------------------------------------------------------------------------
# 4. gradcheck of ART -> POP -> normalized loss
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debias", [False, True])
def test_gradcheck_art_pop_loss(debias):
    gen = torch.Generator().manual_seed(7)
    h = torch.randn(6, 4, dtype=F64, generator=gen)
    y_loss = 5 + 2 * torch.randn(6, dtype=F64, generator=gen)
    count = torch.tensor([3.0], dtype=F64)

    def f(beta, targets, weight, bias, mu, sigma):
        old = PopArtState(mu, sigma, count)
        new = popart.art(old, targets, beta, debias=debias)
        w2, b2 = popart.pop(weight, bias, old, new)
        pred = (h @ w2.T + b2).squeeze(-1)
        return 0.5 * ((pred - popart.normalize(new, y_loss)) ** 2).mean()

    inputs = (
        torch.tensor(0.3, dtype=F64),
        4 + 3 * torch.randn(5, dtype=F64, generator=gen),
        torch.randn(1, 4, dtype=F64, generator=gen),
        torch.randn(1, dtype=F64, generator=gen),
        torch.tensor([1.5], dtype=F64),
        torch.tensor([2.0], dtype=F64),
    )
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_with_task_ids():
    gen = torch.Generator().manual_seed(8)
    k, b = 3, 7
    h = torch.randn(b, 4, dtype=F64, generator=gen)
    tids = torch.tensor([0, 1, 1, 0, 0, 1, 2])
    art_tids = torch.tensor([0, 1, 1, 0, 1])  # task 2 receives no targets (the `where` branch)
    y_loss = 5 + 2 * torch.randn(b, dtype=F64, generator=gen)

    def f(beta, targets, weight, bias, mu, sigma):
        old = PopArtState(mu, sigma, torch.zeros(k, dtype=F64))
        new = popart.art(old, targets, beta, task_ids=art_tids)
        w2, b2 = popart.pop(weight, bias, old, new)
        pred = (h @ w2.T + b2)[torch.arange(b), tids]
        return 0.5 * ((pred - popart.normalize(new, y_loss, task_ids=tids)) ** 2).mean()

    inputs = (
        torch.tensor([0.3, 0.1, 0.5], dtype=F64),
        4 + 3 * torch.randn(5, dtype=F64, generator=gen),
        torch.randn(k, 4, dtype=F64, generator=gen),
        torch.randn(k, dtype=F64, generator=gen),
        torch.tensor([1.5, -2.0, 0.5], dtype=F64),
        torch.tensor([2.0, 0.7, 1.3], dtype=F64),
    )
    inputs = tuple(t.requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# 5. Proposition 3: Algorithm 1 == Algorithm 2
# ----------------------------------------------------------------------------------------------------------


def _body(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(torch.tanh(x @ w1.T + b1) @ w2.T + b2)


def _bits(y: torch.Tensor) -> torch.Tensor:
    return ((y.long().unsqueeze(-1) >> torch.arange(16)) & 1).to(F64)


def test_proposition3_algorithm1_equals_algorithm2():
    num_steps = 150
    gen = torch.Generator().manual_seed(9)
    beta, lr = 0.1, 0.02
    theta0 = [
        torch.randn(8, 16, dtype=F64, generator=gen) / 4,
        torch.zeros(8, dtype=F64),
        torch.randn(8, 8, dtype=F64, generator=gen) / math.sqrt(8),
        torch.zeros(8, dtype=F64),
    ]
    w0 = torch.randn(1, 8, dtype=F64, generator=gen) / math.sqrt(8)
    b0 = torch.zeros(1, dtype=F64)
    ys = torch.randint(0, 1001, (num_steps,), generator=gen).to(F64)
    probe = _bits(torch.randint(0, 1024, (32,), generator=gen))

    # Algorithm 1: ART, POP, SGD on 1/2 delta^2 with delta = W h + b - (Y - mu)/sigma
    th1, w1, b1, s1 = [p.clone() for p in theta0], w0.clone(), b0.clone(), popart.init(1, dtype=F64)
    # Algorithm 2: unnormalized head W~ = sigma W, b~ = sigma b + mu (sigma=1, mu=0 at the start)
    th2, wt, bt, s2 = [p.clone() for p in theta0], w0.clone(), b0.clone(), popart.init(1, dtype=F64)

    max_dev_theta, max_dev_pred = 0.0, 0.0
    for y in ys:
        y1 = y.reshape(1)
        x = _bits(y1)
        # --- Algorithm 1 ---
        new1 = popart.art(s1, y1, beta)
        w1, b1 = popart.pop(w1, b1, s1, new1)
        s1 = new1
        params = [p.detach().requires_grad_() for p in [*th1, w1, b1]]
        hh = _body(params[:4], x)
        delta = hh @ params[4].T + params[5] - (y1 - s1.mu) / s1.sigma
        grads = torch.autograd.grad(0.5 * (delta**2).sum(), params)
        new_params = [(p - lr * g).detach() for p, g in zip(params, grads, strict=True)]
        th1, w1, b1 = new_params[:4], new_params[4], new_params[5]
        # --- Algorithm 2 ---
        s2 = popart.art(s2, y1, beta)
        body = [p.detach().requires_grad_() for p in th2]
        th2, wt, bt = popart.normalized_sgd_step(body, _body(body, x), wt, bt, y1, s2, lr)
        th2, wt, bt = [p.detach() for p in th2], wt.detach(), bt.detach()

        assert torch.equal(s1.mu, s2.mu) and torch.equal(s1.sigma, s2.sigma)
        for a, b in zip(th1, th2, strict=True):
            max_dev_theta = max(max_dev_theta, (a - b).abs().max().item())
        f1 = s1.sigma * (_body(th1, probe) @ w1.T + b1) + s1.mu
        f2 = _body(th2, probe) @ wt.T + bt
        max_dev_pred = max(max_dev_pred, rel_err(f2, f1))
    assert max_dev_theta <= 1e-10
    assert max_dev_pred <= 1e-10
    # non-trivial run: the body moved, sigma grew to the targets' scale, predictions are finite
    assert max((a - b).abs().max().item() for a, b in zip(th1, theta0, strict=True)) > 1e-2
    assert s1.sigma.item() > 100
    assert bool(torch.isfinite(f1).all())


def test_normalized_sgd_step_body_gradient_scaled_by_inverse_sigma_squared():
    # Algorithm 2's body step equals the plain SGD step on 1/2 mean(delta~^2) scaled by 1/sigma^2.
    gen = torch.Generator().manual_seed(10)
    body = [torch.randn(3, 5, dtype=F64, generator=gen).requires_grad_()]
    x = torch.randn(4, 5, dtype=F64, generator=gen)
    w, b = torch.randn(2, 3, dtype=F64, generator=gen), torch.randn(2, dtype=F64, generator=gen)
    y = 10 * torch.randn(4, 2, dtype=F64, generator=gen)
    state = PopArtState(
        torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([3.0, 0.5], dtype=F64), torch.ones(2, dtype=F64)
    )
    lr = 0.1
    feats = torch.tanh(x @ body[0].T)
    new_body, new_w, new_b = popart.normalized_sgd_step(body, feats, w, b, y, state, lr)
    # reference via autograd on the per-output scaled loss
    feats = torch.tanh(x @ body[0].T)  # fresh graph (the step consumed the first one)
    err = feats @ w.T + b - y
    ref_loss = (0.5 * err**2 / state.sigma**2).sum(-1).mean()
    (g,) = torch.autograd.grad(ref_loss, body)
    assert torch.allclose(new_body[0], body[0] - lr * g, rtol=0, atol=1e-14)
    e = err.detach() / 4
    assert torch.allclose(new_w, w - lr * e.T @ feats.detach(), rtol=0, atol=1e-14)
    assert torch.allclose(new_b, b - lr * e.sum(0), rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------------------------------------
# 6. Model-split check (body + head, two torch.optim.SGD == stacked model, hand-written SGD)
# ----------------------------------------------------------------------------------------------------------


def test_model_split_two_optimizers_equal_stacked_hand_sgd():
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 10), nn.Tanh()]
    for _ in range(3):
        layers += [nn.Linear(10, 10), nn.Tanh()]
    body = nn.Sequential(*layers).double()
    head = nn.Linear(10, 1).double()
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.zero_()
    stacked = copy.deepcopy(nn.Sequential(*body, head))
    lr = 1e-3
    opt_body = torch.optim.SGD(body.parameters(), lr=lr)
    opt_head = torch.optim.SGD(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        y = torch.randint(0, 1024, (4,), generator=gen)
        x, yf = _bits(y), y.to(F64)
        opt_body.zero_grad()
        opt_head.zero_grad()
        loss = 0.5 * ((head(body(x)).squeeze(-1) - yf) ** 2).mean()
        loss.backward()
        opt_body.step()
        opt_head.step()

        stacked.zero_grad()
        loss2 = 0.5 * ((stacked(x).squeeze(-1) - yf) ** 2).mean()
        loss2.backward()
        with torch.no_grad():
            for p in stacked.parameters():
                p.copy_(p - lr * p.grad)
        assert loss.item() == pytest.approx(loss2.item(), rel=1e-12)
    split = [*body.parameters(), *head.parameters()]
    for a, b in zip(split, stacked.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    moved = (head.weight - 1).abs().max().item()
    assert moved > 1e-3  # the head really trained


# ----------------------------------------------------------------------------------------------------------
# 7. normalize / unnormalize and PopArtHead
# ----------------------------------------------------------------------------------------------------------


def test_normalize_unnormalize_formulas_and_round_trip():
    gen = torch.Generator().manual_seed(11)
    state = random_state(3, 1e3, F64, gen)
    y = 1e3 * torch.randn(10, 3, dtype=F64, generator=gen)
    n = popart.normalize(state, y)
    for i in range(10):
        for j in range(3):
            expect = (y[i, j].item() - state.mu[j].item()) / state.sigma[j].item()
            assert n[i, j].item() == pytest.approx(expect, rel=1e-14, abs=1e-14)
    assert torch.allclose(popart.unnormalize(state, n), y, rtol=1e-13, atol=1e-10)
    # task_ids variant
    tids = torch.randint(0, 3, (10,), generator=gen)
    yt = y[:, 0]
    nt = popart.normalize(state, yt, task_ids=tids)
    expect = torch.tensor(
        [(yt[i].item() - state.mu[t].item()) / state.sigma[t].item() for i, t in enumerate(tids)], dtype=F64
    )
    assert torch.allclose(nt, expect, rtol=1e-14, atol=1e-14)
    assert torch.allclose(popart.unnormalize(state, nt, task_ids=tids), yt, rtol=1e-13, atol=1e-10)
    assert nt.shape == yt.shape


def test_normalize_scalar_keeps_shape():
    state = PopArtState(torch.tensor([2.0]), torch.tensor([4.0]), torch.zeros(1))
    out = popart.normalize(state, torch.tensor(10.0))
    assert out.item() == 2.0
    assert out.shape == torch.Size([])
    assert popart.unnormalize(state, torch.tensor(2.0)).shape == torch.Size([])


def _make_head(k=2, in_features=5, seed=12, **kw):
    torch.manual_seed(seed)
    head = PopArtHead(in_features, k, dtype=F64, **kw)
    return head


def test_popart_head_forward_unnormalized_and_update():
    gen = torch.Generator().manual_seed(13)
    head = _make_head(beta=0.2)
    params_before = list(head.parameters())
    h = torch.randn(64, 5, dtype=F64, generator=gen)
    w, b = head.linear.weight.detach().clone(), head.linear.bias.detach().clone()
    assert torch.allclose(head(h), h @ w.T + b, rtol=1e-14, atol=1e-14)

    hist: list[list[list[float]]] = [[], []]
    for step in range(20):
        targets = torch.tensor([1e3, -50.0], dtype=F64) + torch.randn(8, 2, dtype=F64, generator=gen) * torch.tensor(
            [100.0, 5.0], dtype=F64
        )
        hist[0].append(targets[:, 0].tolist())
        hist[1].append(targets[:, 1].tolist())
        before = head.unnormalized(h).detach().clone()
        norm_before = head(h).detach().clone()
        state = head.update(targets)
        after = head.unnormalized(h).detach()
        assert rel_err(after, before) <= 1e-12
        if step == 0:
            assert rel_err(head(h).detach(), norm_before) > 1e-3
        # unnormalized == sigma * forward + mu, by hand
        n = head(h).detach()
        assert torch.allclose(after, head.sigma * n + head.mu, rtol=1e-14, atol=1e-10)
        assert isinstance(state, PopArtState) and torch.equal(state.sigma, head.sigma)
    for j in range(2):
        rm, rs = textbook_art(0.0, 1.0, hist[j], 0.2)[-1]
        assert head.mu[j].item() == pytest.approx(rm, rel=1e-12)
        assert head.sigma[j].item() == pytest.approx(rs, rel=1e-9)
    assert head.count.tolist() == [20.0, 20.0]

    # parameters are still the same leaf nn.Parameters, trainable, no graph attached
    params_after = list(head.parameters())
    assert len(params_after) == 2
    for p0, p1 in zip(params_before, params_after, strict=True):
        assert p0 is p1
        assert isinstance(p1, nn.Parameter) and p1.is_leaf and p1.requires_grad and p1.grad_fn is None
    loss = head(h).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # statistics live in buffers (saved with the module) and are not parameters
    sd = head.state_dict()
    assert {"mu", "sigma", "count", "linear.weight", "linear.bias"} <= set(sd)


def test_popart_head_update_with_task_ids():
    gen = torch.Generator().manual_seed(14)
    head = _make_head(k=3, beta=0.3)
    h = torch.randn(16, 5, dtype=F64, generator=gen)
    tids = torch.tensor([0, 0, 2, 2, 2])
    ys = torch.tensor([10.0, 12.0, -300.0, -310.0, -290.0], dtype=F64)
    before = head.unnormalized(h).detach().clone()
    w1_before = head.linear.weight[1].detach().clone()
    head.update(ys, task_ids=tids)
    assert rel_err(head.unnormalized(h).detach(), before) <= 1e-12
    assert head.mu[1].item() == 0.0 and head.sigma[1].item() == 1.0
    assert torch.equal(head.linear.weight[1].detach(), w1_before)  # row of the untouched task unchanged
    rm0, rs0 = textbook_art(0.0, 1.0, [[10.0, 12.0]], 0.3)[-1]
    rm2, rs2 = textbook_art(0.0, 1.0, [[-300.0, -310.0, -290.0]], 0.3)[-1]
    assert head.mu[0].item() == pytest.approx(rm0, rel=1e-12)
    assert head.sigma[0].item() == pytest.approx(rs0, rel=1e-12)
    assert head.mu[2].item() == pytest.approx(rm2, rel=1e-12)
    assert head.sigma[2].item() == pytest.approx(rs2, rel=1e-12)
    assert head.count.tolist() == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------------------------------------
# 8. Bad input
# ----------------------------------------------------------------------------------------------------------

S64 = popart.init(3, dtype=F64)
S1 = popart.init(1, dtype=F64)
Y3 = torch.zeros(4, 3, dtype=F64)


@pytest.mark.parametrize(
    ("beta", "shown"),
    [
        (0.0, "0.0"),
        (1.0, "1.0"),
        (0, "0"),
        (1, "1"),
        (-0.1, "-0.1"),
        (1.5, "1.5"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (torch.tensor(0.0, dtype=F64), "tensor(0.0)"),
        (torch.tensor(1.0, dtype=F64), "tensor(1.0)"),
        (torch.tensor([0.5, 1.5, 0.2], dtype=F64), "tensor([0.5, 1.5, 0.2])"),
        (torch.tensor(float("nan"), dtype=F64), "tensor(nan)"),
    ],
)
def test_bad_beta(beta, shown):
    with pytest.raises(ValueError, match=r"beta must lie in the open interval \(0, 1\), got " + re.escape(shown)):
        popart.art(S64, Y3, beta)


def test_bad_beta_type_and_shape():
    with pytest.raises(TypeError, match=r"beta .*got str '0\.1'"):
        popart.art(S64, Y3, "0.1")
    with pytest.raises(TypeError, match=r"beta must be a float or a tensor in \(0, 1\), got bool True"):
        popart.art(S64, Y3, True)
    with pytest.raises(TypeError, match=r"beta has dtype torch\.float32 but state\.mu has dtype torch\.float64"):
        popart.art(S64, Y3, torch.tensor(0.5, dtype=F32))
    with pytest.raises(ValueError, match=r"beta must be a scalar or have shape \[num_outputs\]=\[3\], got \(2,\)"):
        popart.art(S64, Y3, torch.tensor([0.5, 0.5], dtype=F64))
    with pytest.raises(TypeError, match=r"beta must be a floating-point tensor in \(0, 1\), got dtype torch\.int64"):
        popart.art(S64, Y3, torch.tensor(1))
    with pytest.raises(ValueError, match=r"beta must lie in the open interval \(0, 1\), got 1\.5"):
        PopArtHead(3, beta=1.5)
    with pytest.raises(ValueError, match=r"beta must lie in the open interval \(0, 1\), got 0"):
        PopArtHead(3, beta=0)


@pytest.mark.parametrize(("value", "shown"), [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_non_finite_targets(value, shown):
    y = torch.zeros(4, 3, dtype=F64)
    y[2, 1] = value
    with pytest.raises(
        ValueError, match=r"targets must be finite, got a non-finite value " + shown + r" at index \[2, 1\]"
    ):
        popart.art(S64, y, 0.1)
    with pytest.raises(ValueError, match=r"targets must be finite.*" + shown):
        popart.art(S1, torch.tensor([1.0, value], dtype=F64), 0.1)


def test_shape_mismatches():
    with pytest.raises(
        ValueError, match=r"targets must have a last dimension of size num_outputs=3 .*got shape \(4, 2\)"
    ):
        popart.art(S64, torch.zeros(4, 2, dtype=F64), 0.1)
    with pytest.raises(ValueError, match=r"targets must have a last dimension of size num_outputs=3 .*got shape \(\)"):
        popart.art(S64, torch.tensor(1.0, dtype=F64), 0.1)
    w, b = torch.zeros(3, 5, dtype=F64), torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match=r"weight must have num_outputs=3 rows when task_ids is None, got 2"):
        popart.pop(torch.zeros(2, 5, dtype=F64), torch.zeros(2, dtype=F64), S64, S64)
    with pytest.raises(ValueError, match=r"weight must be a \[rows, in_features\] tensor, got torch\.Size\(\[3\]\)"):
        popart.pop(torch.zeros(3, dtype=F64), b, S64, S64)
    with pytest.raises(ValueError, match=r"bias must have shape \[rows\]=\[3\] to match weight, got \(2,\)"):
        popart.pop(w, torch.zeros(2, dtype=F64), S64, S64)
    with pytest.raises(ValueError, match=r"bias must have shape \[rows\]=\[3\] to match weight, got \(3, 1\)"):
        popart.pop(w, torch.zeros(3, 1, dtype=F64), S64, S64)
    with pytest.raises(ValueError, match=r"new must have num_outputs=3 like old, got 1"):
        popart.pop(w, b, S64, S1)
    with pytest.raises(ValueError, match=r"task_ids must have shape \(3,\) .*got \(2,\)"):
        popart.pop(w, b, S64, S64, task_ids=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"task_ids must have shape \(4,\) \(the targets' shape\), got \(3,\)"):
        popart.art(S64, torch.zeros(4, dtype=F64), 0.1, task_ids=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"y must have a last dimension of size num_outputs=3 .*got shape \(4, 2\)"):
        popart.normalize(S64, torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"n must have a last dimension of size num_outputs=3 .*got shape \(5,\)"):
        popart.unnormalize(S64, torch.zeros(5, dtype=F64))
    bad_state = PopArtState(torch.zeros(3, dtype=F64), torch.ones(2, dtype=F64), torch.zeros(3, dtype=F64))
    with pytest.raises(
        ValueError, match=r"state fields must all have shape \[num_outputs\], got mu \(3,\), sigma \(2,\)"
    ):
        popart.art(bad_state, Y3, 0.1)


@pytest.mark.parametrize(("bad", "shown"), [(-1, "-1"), (3, "3"), (7, "7")])
def test_task_ids_out_of_range(bad, shown):
    tids = torch.tensor([0, bad, 1, 2])
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 3\) \(num_outputs=3\), got " + shown):
        popart.art(S64, torch.zeros(4, dtype=F64), 0.1, task_ids=tids)
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 3\).*got " + shown):
        popart.normalize(S64, torch.zeros(4, dtype=F64), task_ids=tids)
    with pytest.raises(ValueError, match=r"task_ids must lie in \[0, 3\).*got " + shown):
        popart.pop(torch.zeros(4, 2, dtype=F64), torch.zeros(4, dtype=F64), S64, S64, task_ids=tids)


def test_task_ids_wrong_dtype():
    with pytest.raises(TypeError, match=r"task_ids must be an integer tensor, got dtype torch\.float32"):
        popart.art(S64, torch.zeros(2, dtype=F64), 0.1, task_ids=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"task_ids must be an integer tensor, got dtype torch\.bool"):
        popart.art(S64, torch.zeros(2, dtype=F64), 0.1, task_ids=torch.tensor([True, False]))
    with pytest.raises(TypeError, match=r"task_ids must be an integer tensor, got list"):
        popart.art(S64, torch.zeros(2, dtype=F64), 0.1, task_ids=[0, 1])


def test_dtype_mixes():
    with pytest.raises(TypeError, match=r"targets has dtype torch\.float32 but state\.mu has dtype torch\.float64"):
        popart.art(S64, torch.zeros(4, 3, dtype=F32), 0.1)
    with pytest.raises(TypeError, match=r"targets must be a floating-point tensor, got dtype torch\.int64"):
        popart.art(S64, torch.zeros(4, 3, dtype=torch.long), 0.1)
    with pytest.raises(TypeError, match=r"weight has dtype torch\.float64 but .* has dtype torch\.float32|has dtype"):
        popart.pop(torch.zeros(3, 2, dtype=F32), torch.zeros(3, dtype=F32), S64, S64)
    with pytest.raises(TypeError, match=r"y has dtype torch\.float32 but state\.mu has dtype torch\.float64"):
        popart.normalize(S64, torch.zeros(3, dtype=F32))
    with pytest.raises(TypeError, match=r"targets must be a tensor, got list"):
        popart.art(S64, [1.0, 2.0, 3.0], 0.1)


def test_non_state_and_bad_num_outputs():
    with pytest.raises(TypeError, match=r"state must be a PopArtState .*got tuple"):
        popart.art(tuple(S64), Y3, 0.1)
    with pytest.raises(TypeError, match=r"old must be a PopArtState .*got dict"):
        popart.pop(torch.zeros(3, 2, dtype=F64), torch.zeros(3, dtype=F64), {"mu": 0}, S64)
    with pytest.raises(TypeError, match=r"state must be a PopArtState .*got Tensor"):
        popart.normalize(torch.zeros(3), torch.zeros(3))
    for n in (0, -2):
        with pytest.raises(ValueError, match=rf"num_outputs must be a positive int, got {n}"):
            popart.init(n)
        with pytest.raises(ValueError, match=rf"num_outputs must be a positive int, got {n}"):
            PopArtHead(4, n)
    with pytest.raises(TypeError, match=r"num_outputs must be a positive int, got float 1\.5"):
        popart.init(1.5)
    with pytest.raises(TypeError, match=r"num_outputs must be a positive int, got bool True"):
        popart.init(True)
    with pytest.raises(TypeError, match=r"dtype must be a floating-point dtype, got torch\.int32"):
        popart.init(2, dtype=torch.int32)


def test_bad_sigma_bounds_and_lr():
    with pytest.raises(ValueError, match=r"sigma_min must be positive and finite, got 0\.0"):
        popart.art(S64, Y3, 0.1, sigma_min=0.0)
    with pytest.raises(ValueError, match=r"sigma_min must be positive and finite, got -1"):
        popart.art(S64, Y3, 0.1, sigma_min=-1)
    with pytest.raises(ValueError, match=r"sigma_max must be greater than sigma_min=1\.0, got 0\.5"):
        popart.art(S64, Y3, 0.1, sigma_min=1.0, sigma_max=0.5)
    body = [torch.zeros(2, 3, dtype=F64, requires_grad=True)]
    feats = torch.tanh(torch.ones(4, 3, dtype=F64) @ body[0].T)
    w, b = torch.zeros(1, 2, dtype=F64), torch.zeros(1, dtype=F64)
    for lr, shown in ((0.0, "0.0"), (-0.1, "-0.1"), (float("nan"), "nan")):
        with pytest.raises(ValueError, match=r"lr must be positive and finite, got " + shown):
            popart.normalized_sgd_step(body, feats, w, b, torch.zeros(4, dtype=F64), S1, lr)
    with pytest.raises(ValueError, match=r"targets must have shape \[B, num_outputs\]=\[4, 1\], got \(3,\)"):
        popart.normalized_sgd_step(body, feats, w, b, torch.zeros(3, dtype=F64), S1, 0.1)
    with pytest.raises(ValueError, match=r"state must have num_outputs=1 \(the head's rows\), got 3"):
        popart.normalized_sgd_step(body, feats, w, b, torch.zeros(4, dtype=F64), S64, 0.1)
    with pytest.raises(ValueError, match=r"features must be \[B, in_features\] matching weight .*got \(4, 3\)"):
        popart.normalized_sgd_step(body, torch.zeros(4, 3, dtype=F64), w, b, torch.zeros(4, dtype=F64), S1, 0.1)


def test_validation_error_does_not_consume_state():
    # a failed call leaves its inputs untouched (pure functions)
    s = PopArtState(torch.tensor([1.0], dtype=F64), torch.tensor([2.0], dtype=F64), torch.tensor([3.0], dtype=F64))
    with pytest.raises(ValueError):
        popart.art(s, torch.tensor([float("nan")], dtype=F64), 0.1)
    assert s.mu.item() == 1.0 and s.sigma.item() == 2.0 and s.count.item() == 3.0


# ----------------------------------------------------------------------------------------------------------
# 10. vmap compatibility
# ----------------------------------------------------------------------------------------------------------


def _batched_states(n, k, gen):
    mu = 10 * torch.randn(n, k, dtype=F64, generator=gen)
    sigma = torch.exp(torch.randn(n, k, dtype=F64, generator=gen))
    count = torch.randint(0, 5, (n, k), generator=gen).to(F64)
    return PopArtState(mu, sigma, count)


def _index(state, i):
    return PopArtState(*(t[i] for t in state))


def test_vmap_art_and_pop_match_loop():
    gen = torch.Generator().manual_seed(15)
    n, k = 5, 3
    states = _batched_states(n, k, gen)
    targets = 20 * torch.randn(n, 4, k, dtype=F64, generator=gen)
    betas = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.05], dtype=F64)
    weights = torch.randn(n, k, 6, dtype=F64, generator=gen)
    biases = torch.randn(n, k, dtype=F64, generator=gen)

    def step(state, y, beta, w, b):
        new = popart.art(state, y, beta, debias=True)
        w2, b2 = popart.pop(w, b, state, new)
        return new, w2, b2

    new_b, w_b, b_b = torch.func.vmap(step)(states, targets, betas, weights, biases)
    assert isinstance(new_b, PopArtState)
    for i in range(n):
        new_i, w_i, b_i = step(_index(states, i), targets[i], betas[i].item(), weights[i], biases[i])
        for got, exp in zip((*new_b, w_b, b_b), (*new_i, w_i, b_i), strict=True):
            assert torch.allclose(got[i], exp, rtol=1e-14, atol=1e-14)

    # vmap over states only, shared targets and float beta
    shared = 20 * torch.randn(4, k, dtype=F64, generator=gen)
    out = torch.func.vmap(lambda s: popart.art(s, shared, 0.1), in_dims=(0,))(states)
    for i in range(n):
        exp = popart.art(_index(states, i), shared, 0.1)
        assert torch.allclose(out.mu[i], exp.mu, rtol=1e-14) and torch.allclose(out.sigma[i], exp.sigma, rtol=1e-14)


def test_vmap_with_task_ids_and_meta_gradient():
    gen = torch.Generator().manual_seed(16)
    n, k, b = 4, 3, 6
    states = _batched_states(n, k, gen)
    targets = 20 * torch.randn(n, b, dtype=F64, generator=gen)
    tids = torch.randint(0, 2, (n, b), generator=gen)  # task 2 untouched in every batch element
    out = torch.func.vmap(lambda s, y, t: popart.art(s, y, 0.2, task_ids=t))(states, targets, tids)
    for i in range(n):
        exp = popart.art(_index(states, i), targets[i], 0.2, task_ids=tids[i])
        assert torch.allclose(out.mu[i], exp.mu, rtol=1e-14) and torch.allclose(out.sigma[i], exp.sigma, rtol=1e-14)
        assert out.mu[i, 2].item() == states.mu[i, 2].item()

    # per-example meta-gradient w.r.t. beta: vmap(grad) == loop of autograd.grad
    h = torch.randn(n, 5, 7, dtype=F64, generator=gen)
    w = torch.randn(n, k, 7, dtype=F64, generator=gen)
    bias = torch.randn(n, k, dtype=F64, generator=gen)
    y_loss = 10 * torch.randn(n, 5, k, dtype=F64, generator=gen)
    ys = 10 * torch.randn(n, 8, k, dtype=F64, generator=gen)
    betas = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)

    def loss(beta, state, y, hh, ww, bb, yl):
        new = popart.art(state, y, beta)
        w2, b2 = popart.pop(ww, bb, state, new)
        return 0.5 * ((hh @ w2.T + b2 - popart.normalize(new, yl)) ** 2).mean()

    g_vmap = torch.func.vmap(torch.func.grad(loss))(betas, states, ys, h, w, bias, y_loss)
    for i in range(n):
        beta_i = betas[i].clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(beta_i, _index(states, i), ys[i], h[i], w[i], bias[i], y_loss[i]), beta_i)
        assert g_vmap[i].item() == pytest.approx(g.item(), rel=1e-12)
        assert g.item() != 0.0
