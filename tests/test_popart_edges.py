"""Sharp edges of metaopt.popart (issue 12): batch rules vs rlax, bad hand-built states, sigma bounds,
``init(like=)`` and the documented beta default.

References: values recorded once from real rlax, hand computations in float64, and the closed forms of
the module docstrings. Every test failed before the fix it covers (or checks a documented bound).
"""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch

from metaopt import popart
from metaopt.popart import PopArtHead, PopArtState

F64 = torch.float64
F32 = torch.float32


# ----------------------------------------------------------------------------------------------------------
# 1. Batch rules: "moments" (one step with the batch moments) vs "sum" (rlax: per-sample updates added)
# ----------------------------------------------------------------------------------------------------------

# Recorded once from real rlax (rlax 0.1.9, jax 0.10.2, float64 via jax_enable_x64) in a throwaway venv:
#   init, update = rlax.popart(num_outputs=2, step_size=0.05, scale_lb=1e-4, scale_ub=1e6)
#   params = dict(w=W_HAIKU, b=B0); state = init()          # shift 0, scale 1, second_moment 1
#   for y, i in zip(RLAX_TARGETS, RLAX_INDICES): params, state = update(params, state, y, i)
# printing state.shift, state.scale, params["w"], params["b"] after each update. rlax's w is Haiku's
# [in_features, out] layout; metaopt's weight is its transpose.
RLAX_TARGETS = [
    [3.0, 5.0, -2.0, 10.0, 7.0],
    [100.0, -40.0, 250.0, 80.0],
    [1.5, 2.5, 3.5, 4.5, 5.5, 6.5],
]
RLAX_INDICES = [[0, 0, 1, 0, 1], [1, 1, 1, 0], [0, 1, 0, 1, 0, 0]]
W_HAIKU = [[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]]
B0 = [0.1, -0.3]
RLAX_SHIFT = [[0.9, 0.25], [4.855, 15.712500000000002], [4.734, 14.49125]]
RLAX_SCALE = [
    [2.596150997149434, 1.86748493969831],
    [17.424163538029596, 58.831410349829284],
    [15.61016476530597, 55.93339274027189],
]
RLAX_W = [
    [[0.19259280394283634, -0.5354795526016659], [0.7703712157713454, 0.13386988815041648],
     [-0.2888892059142545, 0.8032193289024989]],
    [[0.028695782090698986, -0.016997722714000886], [0.11478312836279594, 0.0042494306785002215],
     [-0.043043673136048476, 0.025496584071001333]],
    [[0.03203041143494295, -0.017878407709747288], [0.1281216457397718, 0.004469601927436822],
     [-0.04804561715241443, 0.02681761156462094]],
]
RLAX_B = [
    [-0.3081484863085382, -0.2945137539309163],
    [-0.27289688768254744, -0.27217603495793924],
    [-0.29685785317905133, -0.26444399803679963],
]
RLAX_BOUNDS = {"sigma_min": 1e-4, "sigma_max": 1e6}


def test_sum_rule_matches_recorded_rlax_values():
    state = popart.init(2, dtype=F64)
    w, b = torch.tensor(W_HAIKU, dtype=F64).T, torch.tensor(B0, dtype=F64)
    for k, (y, ids) in enumerate(zip(RLAX_TARGETS, RLAX_INDICES, strict=True)):
        new = popart.art(
            state, torch.tensor(y, dtype=F64), 0.05, task_ids=torch.tensor(ids), batch_rule="sum", **RLAX_BOUNDS
        )
        w, b = popart.pop(w, b, state, new)
        state = new
        # float64 round-off only: rlax computes nu - mu^2, metaopt the centered form
        torch.testing.assert_close(state.mu, torch.tensor(RLAX_SHIFT[k], dtype=F64), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(state.sigma, torch.tensor(RLAX_SCALE[k], dtype=F64), rtol=1e-13, atol=0)
        torch.testing.assert_close(w.T, torch.tensor(RLAX_W[k], dtype=F64), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(b, torch.tensor(RLAX_B[k], dtype=F64), rtol=1e-12, atol=1e-15)


def test_moments_rule_is_not_rlax_rule():
    # Task 0's first batch is [3, 5, 10] (mean 6): "moments" moves mu by beta * 6 = 0.3, rlax by 3 * 0.3.
    new = popart.art(
        popart.init(2, dtype=F64), torch.tensor(RLAX_TARGETS[0], dtype=F64), 0.05,
        task_ids=torch.tensor(RLAX_INDICES[0]), **RLAX_BOUNDS,
    )
    assert new.mu.tolist() == pytest.approx([0.3, 0.05 * 2.5], rel=1e-14)
    assert RLAX_SHIFT[0] == pytest.approx([3 * 0.3, 2 * 0.05 * 2.5], rel=1e-14)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_sum_rule_is_moments_rule_with_step_n_beta(n):
    gen = torch.Generator().manual_seed(n)
    old = PopArtState(torch.tensor([3.0], dtype=F64), torch.tensor([2.0], dtype=F64), torch.tensor([4.0], dtype=F64))
    y = 10 + 5 * torch.randn(n, dtype=F64, generator=gen)
    beta = 0.07
    got = popart.art(old, y, beta, batch_rule="sum")
    ref = popart.art(old, y, beta * n)
    assert got.mu.item() == pytest.approx(ref.mu.item(), rel=1e-14)
    assert got.sigma.item() == pytest.approx(ref.sigma.item(), rel=1e-14)
    # by hand: mu' = mu + n beta (mean - mu); nu' = nu + beta sum(y^2 - nu); sigma'^2 = nu' - mu'^2
    mu, nu = 3.0, 4.0 + 9.0
    ys = y.tolist()
    mu_h = mu + beta * sum(v - mu for v in ys)
    nu_h = nu + beta * sum(v * v - nu for v in ys)
    assert got.mu.item() == pytest.approx(mu_h, rel=1e-14)
    assert got.sigma.item() == pytest.approx(math.sqrt(nu_h - mu_h**2), rel=1e-10)
    if n == 1:  # one target: both rules are the same single-sample ART step
        assert torch.equal(got.sigma, popart.art(old, y, beta).sigma)


def test_sum_rule_gradient_and_validation():
    beta = torch.tensor(0.05, dtype=F64, requires_grad=True)
    y = torch.tensor([1.0, 2.0, 6.0], dtype=F64)
    new = popart.art(popart.init(1, dtype=F64), y, beta, batch_rule="sum")
    (g,) = torch.autograd.grad(new.mu.sum(), beta)
    assert g.item() == pytest.approx(3 * 3.0, rel=1e-14)  # d/dbeta [n beta (mean - 0)] = n * mean
    with pytest.raises(ValueError, match=r"batch_rule must be one of \('moments', 'sum'\), got 'mean'"):
        popart.art(popart.init(1, dtype=F64), y, 0.1, batch_rule="mean")
    with pytest.raises(ValueError, match=r"debias=True needs batch_rule='moments'.*got 'sum'"):
        popart.art(popart.init(1, dtype=F64), y, 0.1, batch_rule="sum", debias=True)
    with pytest.raises(ValueError, match=r"batch_rule must be one of"):
        PopArtHead(3, batch_rule="rlax")
    head = PopArtHead(2, batch_rule="sum", beta=0.1, dtype=F64)
    head.update(y)
    assert head.mu.item() == pytest.approx(0.3 * 3.0, rel=1e-14)


# ----------------------------------------------------------------------------------------------------------
# 2. Hand-built states with sigma <= 0 or non-finite values raise (where values are concrete)
# ----------------------------------------------------------------------------------------------------------

BAD_SIGMAS = [(0.0, "0.0"), (-1.5, "-1.5"), (float("nan"), "nan"), (float("inf"), "inf")]


def _bad_state(sigma: float) -> PopArtState:
    mu, sig = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([1.0, sigma], dtype=F64)
    return PopArtState(mu, sig, torch.zeros(2, dtype=F64))


@pytest.mark.parametrize(("sigma", "shown"), BAD_SIGMAS)
def test_bad_sigma_raises_in_every_function(sigma, shown):
    bad, good = _bad_state(sigma), popart.init(2, dtype=F64)
    y, w, b = torch.ones(3, 2, dtype=F64), torch.ones(2, 4, dtype=F64), torch.zeros(2, dtype=F64)
    msg = rf"must be positive and finite, got {shown} at index \[1\] \(sigma is a scale"
    with pytest.raises(ValueError, match=r"state\.sigma " + msg):
        popart.normalize(bad, y)
    with pytest.raises(ValueError, match=r"state\.sigma " + msg):
        popart.unnormalize(bad, y)
    with pytest.raises(ValueError, match=r"state\.sigma " + msg):
        popart.art(bad, y, 0.1)
    with pytest.raises(ValueError, match=r"old\.sigma " + msg):
        popart.pop(w, b, bad, good)
    with pytest.raises(ValueError, match=r"new\.sigma " + msg):
        popart.pop(w, b, good, bad)
    body = [torch.zeros(4, 3, dtype=F64, requires_grad=True)]
    feats = torch.tanh(torch.ones(3, 3, dtype=F64) @ body[0].T)
    with pytest.raises(ValueError, match=r"state\.sigma " + msg):
        popart.normalized_sgd_step(body, feats, w, b, y, bad, 0.1)


def test_non_finite_mu_raises():
    bad = PopArtState(torch.tensor([float("nan")], dtype=F64), torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64))
    with pytest.raises(ValueError, match=r"state\.mu must be finite, got a non-finite value nan at index \[0\]"):
        popart.normalize(bad, torch.ones(2, dtype=F64))


def test_bad_sigma_under_vmap_is_not_checked_as_documented():
    # Inside torch.func transforms values cannot be read: the check is skipped and sigma = 0 gives inf
    # (the module docstring says so; validate hand-built states outside the transform).
    bad = PopArtState(torch.ones(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64))
    out = torch.func.vmap(lambda s, y: popart.normalize(s, y))(bad, 2 * torch.ones(3, 1, dtype=F64))
    assert bool(torch.isinf(out).all())
    with pytest.raises(ValueError, match=r"state\.sigma must be positive"):
        popart.normalize(PopArtState(*(t[0] for t in bad)), torch.ones(1, dtype=F64))


# ----------------------------------------------------------------------------------------------------------
# 3. sigma bounds: defaults span the advertised target scales; clipping is visible
# ----------------------------------------------------------------------------------------------------------


def _run(scale: float, spread: float, dtype: torch.dtype, beta: float, steps: int, **bounds) -> tuple:
    gen = torch.Generator().manual_seed(0)
    ys = scale * (2.0 + spread * torch.randn(steps, dtype=F64, generator=gen))
    state = popart.init(1, dtype=dtype)
    clipped = torch.zeros(1, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for y in ys.to(dtype):
            state = popart.art(state, y, beta, **bounds)
            clipped += popart.sigma_at_bound(state, **bounds).long()
    normalized = popart.normalize(state, ys[-200:].to(dtype)).to(F64)
    n_warn = sum(issubclass(w.category, popart.SigmaClipWarning) for w in caught)
    return state, clipped.item(), normalized, n_warn


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8])
@pytest.mark.parametrize("spread", [0.1, 1.0])
def test_default_bounds_inactive_across_advertised_scales(scale, spread, dtype):
    # targets scale * (2 + spread N(0, 1)): standard deviation from 1e-5 (below the old bound 1e-4) to 1e8
    # (above the old bound 1e6). beta = 0.05 settles within the 600 steps.
    state, clipped, normalized, n_warn = _run(scale, spread, dtype, 0.05, 600)
    assert clipped == 0 and n_warn == 0
    assert 0.3 * spread * scale < state.sigma.item() < 3 * spread * scale  # tracks the true spread
    assert 0.3 < normalized.std().item() < 3.0  # normalized targets are O(1)
    assert bool(torch.isfinite(normalized).all())


@pytest.mark.parametrize(
    ("scale", "spread", "which"), [(1e-4, 0.1, "sigma_min=0.0001"), (1e8, 1.0, "sigma_max=1e\\+06")]
)
def test_old_bounds_clip_and_warn(scale, spread, which):
    # Hessel et al.'s [1e-4, 1e6], passed explicitly: the same targets are clipped, counted and warned about.
    state, clipped, normalized, n_warn = _run(scale, spread, F64, 0.05, 600, sigma_min=1e-4, sigma_max=1e6)
    assert clipped > 100 and n_warn == clipped
    assert popart.sigma_at_bound(state, sigma_min=1e-4, sigma_max=1e6).item()
    if scale > 1:  # the issue: 1e8-scale targets keep sigma = 1e6 and normalized targets of ~100
        assert state.sigma.item() == 1e6 and normalized.std().item() > 50
    else:  # spread 1e-5 squashed by sigma = 1e-4
        assert state.sigma.item() == 1e-4 and normalized.std().item() < 0.3
    with pytest.warns(popart.SigmaClipWarning, match=which):
        popart.art(state, torch.tensor([2 * scale], dtype=F64), 0.05, sigma_min=1e-4, sigma_max=1e6)


def test_float32_large_targets_do_not_overflow():
    # sigma^2 and d^2 of 1e8-scale targets (and a 64x outlier) stay finite in float32
    state = popart.init(1, dtype=F32)
    for y in [1e8, 3e8, 6.4e9, 2e8, 1e8]:
        state = popart.art(state, torch.tensor([y], dtype=F32), 0.5)
        assert bool(torch.isfinite(state.sigma).all()) and not popart.sigma_at_bound(state).item()


@pytest.mark.parametrize(
    ("dtype", "kwargs", "message"),
    [
        (F32, {"sigma_max": 1e20}, r"sigma_max must satisfy sigma_max\*\*2 <= 3\.4e\+38 .*<= 1\.84e\+19; got 1e\+20"),
        (F32, {"sigma_min": 1e-20}, r"sigma_min must satisfy sigma_min\*\*2 >= 1\.18e-38 .*>= 1\.08e-19; got 1e-20"),
        (F64, {"sigma_max": 1e160}, r"sigma_max must satisfy .*got 1e\+160"),
        (F64, {"sigma_max": float("inf")}, r"sigma_max must be positive and finite, got inf"),
    ],
)
def test_bounds_checked_against_dtype(dtype, kwargs, message):
    with pytest.raises(ValueError, match=message):
        popart.art(popart.init(1, dtype=dtype), torch.ones(2, dtype=dtype), 0.1, **kwargs)
    with pytest.raises(ValueError, match=message):
        PopArtHead(3, dtype=dtype, **kwargs)


def test_float64_accepts_bounds_float32_rejects():
    new = popart.art(popart.init(1, dtype=F64), torch.tensor([1e21], dtype=F64), 0.5, sigma_max=1e22)
    assert new.sigma.item() == pytest.approx(math.sqrt(0.5 * (1 + 0.5 * 1e42)), rel=1e-12)
    with pytest.raises(ValueError, match=r"sigma_max must satisfy"):
        popart.art(popart.init(1, dtype=F32), torch.tensor([1e21], dtype=F32), 0.5, sigma_max=1e22)


def test_clip_counter_in_head_and_under_vmap():
    head = PopArtHead(2, beta=0.5, sigma_max=10.0, dtype=F64)
    with pytest.warns(popart.SigmaClipWarning, match="sigma_max=10"):
        for y in [100.0, 1.0, 1.0, 1.0]:
            head.update(torch.tensor([y], dtype=F64))
    # by hand (beta = 0.5, mu0 = 0, sigma0 = 1): y = 100: d = 100, sigma'^2 = 0.5 (1 + 0.5 * 100^2) -> 50,
    # clipped to 10, mu = 50; y = 1: d = -49, sigma'^2 = 0.5 (100 + 0.5 * 49^2) = 650.25 -> clipped, mu = 25.5;
    # d = -24.5: 200.06 -> clipped, mu = 13.25; d = -12.25: 0.5 (100 + 0.5 * 12.25^2) = 87.5 -> 9.35, free.
    assert head.clipped_steps.tolist() == [3]
    assert head.sigma.item() == pytest.approx(math.sqrt(0.5 * (100 + 0.5 * 12.25**2)), rel=1e-12)
    assert head.mu.item() == pytest.approx(7.125, rel=1e-14)
    assert "clipped_steps" not in head.state_dict()  # diagnostics only: checkpoints are unchanged
    # inside vmap no warning can be emitted, but sigma_at_bound still counts
    states = PopArtState(torch.zeros(2, 1, dtype=F64), torch.ones(2, 1, dtype=F64), torch.zeros(2, 1, dtype=F64))
    ys = torch.tensor([[100.0], [1.0]], dtype=F64)

    def step(s, y):
        new = popart.art(s, y, 0.5, sigma_max=10.0)
        return popart.sigma_at_bound(new, sigma_max=10.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.func.vmap(step)(states, ys).flatten().tolist() == [True, False]


# ----------------------------------------------------------------------------------------------------------
# 4. init(like=)
# ----------------------------------------------------------------------------------------------------------


def test_init_like_takes_dtype_and_device():
    assert torch.get_default_dtype() == F32
    head = torch.nn.Linear(4, 1).double()
    state = popart.init(1, like=head.weight)
    assert state.mu.dtype == F64 and state.sigma.dtype == F64 and state.count.dtype == F64
    assert state.mu.device == head.weight.device
    # the float64 model now meets no dtype error
    new = popart.art(state, torch.tensor([3.0, 5.0], dtype=F64), 0.1)
    w, b = popart.pop(head.weight, head.bias, state, new)
    assert w.dtype == F64 and new.mu.item() == pytest.approx(0.4, rel=1e-14)
    meta = popart.init(3, like=torch.empty(2, device="meta", dtype=torch.float16))
    assert meta.mu.device.type == "meta" and meta.mu.dtype == torch.float16 and meta.mu.shape == (3,)
    assert popart.init(2, dtype=F64, device="cpu").mu.dtype == F64  # dtype=/device= still work


def test_init_like_validation():
    with pytest.raises(TypeError, match=r"like must be a floating-point tensor .*got dtype torch\.int64"):
        popart.init(1, like=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"like must be a floating-point tensor .*got list \[1\.0\]"):
        popart.init(1, like=[1.0])
    with pytest.raises(ValueError, match=r"pass either like= or dtype=/device=, not both.*dtype=torch\.float32"):
        popart.init(1, like=torch.zeros(1, dtype=F64), dtype=F32)


# ----------------------------------------------------------------------------------------------------------
# 5. The documented beta default
# ----------------------------------------------------------------------------------------------------------


def test_head_beta_default_is_documented():
    default = inspect.signature(PopArtHead).parameters["beta"].default
    assert default == 3e-4 and PopArtHead(2).beta == default
    doc = PopArtHead.__doc__
    assert "3e-4" in doc and "Hessel et al. (2018)" in doc and "beta = 0.1" in doc
    # the defaults the docstrings name are the signature's
    assert "1e-6, 1e10" in popart.__doc__
    assert (popart.DEFAULT_SIGMA_MIN, popart.DEFAULT_SIGMA_MAX) == (1e-6, 1e10)
    sig = inspect.signature(popart.art).parameters
    assert sig["sigma_min"].default == popart.DEFAULT_SIGMA_MIN and sig["batch_rule"].default == "moments"
