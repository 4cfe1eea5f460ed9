"""Hypothesis property tests for metaopt.popart over target scales 1e-6 ... 1e8 in float32 and float64.

References are computed independently in float64 from the values the library returns (closed-form
unnormalized outputs, Proposition 2's bound, the normalize formula); tolerances are a small multiple
of the dtype's machine epsilon times the magnitudes involved.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metaopt import popart
from metaopt.popart import PopArtState

F64 = torch.float64
F32 = torch.float32

dtypes = st.sampled_from([F32, F64])
scales = st.builds(lambda e, m: m * 10.0**e, st.integers(-6, 8), st.floats(1.0, 9.99))
seeds = st.integers(0, 2**31 - 1)
betas = st.floats(1e-4, 0.95)
SETTINGS = settings(max_examples=60, deadline=None)


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def make_state(k: int, scale: float, dtype: torch.dtype, gen: torch.Generator, spread: float = 10.0) -> PopArtState:
    mu = scale * spread * (2 * torch.rand(k, dtype=F64, generator=gen) - 1)
    sigma = scale * torch.exp(6 * torch.rand(k, dtype=F64, generator=gen) - 3)  # scale * [e^-3, e^3]
    count = torch.randint(0, 10, (k,), generator=gen).to(F64)
    return PopArtState(mu.to(dtype), sigma.to(dtype), count.to(dtype))


def f64(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().to(F64) for t in ts]


@pytest.mark.filterwarnings("ignore::metaopt.popart.SigmaClipWarning")  # zero-spread targets may hit sigma_min
@SETTINGS
@given(
    dtype=dtypes,
    scale=scales,
    seed=seeds,
    beta=betas,
    k=st.integers(1, 3),
    n=st.integers(1, 6),
    use_task_ids=st.booleans(),
    target_spread=st.floats(0.0, 100.0),
    debias=st.booleans(),
)
def test_art_pop_preserves_outputs(dtype, scale, seed, beta, k, n, use_task_ids, target_spread, debias):
    gen = torch.Generator().manual_seed(seed)
    old = make_state(k, scale, dtype, gen)
    if use_task_ids:
        tids = torch.randint(0, k, (n,), generator=gen)
        targets = scale * target_spread * (2 * torch.rand(n, dtype=F64, generator=gen) - 1)
    else:
        tids = None
        targets = scale * target_spread * (2 * torch.rand(n, k, dtype=F64, generator=gen) - 1)
    bounds = {"sigma_min": scale * 1e-8, "sigma_max": scale * 1e8}
    new = popart.art(old, targets.to(dtype), beta, task_ids=tids, debias=debias, **bounds)
    w = torch.randn(k, 5, dtype=F64, generator=gen).to(dtype)
    b = torch.randn(k, dtype=F64, generator=gen).to(dtype)
    h = torch.randn(64, 5, dtype=F64, generator=gen)
    w2, b2 = popart.pop(w, b, old, new)

    # evaluate sigma (W h + b) + mu in float64 from the values in `dtype`: isolates POP's rounding
    w, b, w2, b2, mu0, s0, mu1, s1 = f64(w, b, w2, b2, old.mu, old.sigma, new.mu, new.sigma)
    before = s0 * (h @ w.T + b) + mu0
    after = s1 * (h @ w2.T + b2) + mu1
    magnitude = before.abs().max() + mu0.abs().max() + mu1.abs().max() + s0.max()
    assert (after - before).abs().max().item() <= 100 * eps(dtype) * magnitude.item()


@SETTINGS
@given(
    dtype=dtypes,
    scale=scales,
    seed=seeds,
    beta=betas,
    log_min=st.floats(-8.0, 1.0),
    log_ratio=st.floats(0.5, 10.0),
    steps=st.integers(1, 4),
    target_spread=st.floats(0.0, 1e3),
)
def test_sigma_positive_and_within_bounds(dtype, scale, seed, beta, log_min, log_ratio, steps, target_spread):
    gen = torch.Generator().manual_seed(seed)
    sigma_min = scale * 10.0**log_min
    # sigma_max**2 must not overflow float32 (art rejects sigma_max > 1.8e19 there)
    sigma_max = min(sigma_min * 10.0**log_ratio, 1e18)
    state = make_state(2, scale, dtype, gen)
    lo = torch.tensor(sigma_min, dtype=dtype)  # the bounds as representable in `dtype`
    hi = torch.tensor(sigma_max, dtype=dtype)
    for _ in range(steps):
        y = scale * target_spread * (2 * torch.rand(3, 2, dtype=F64, generator=gen) - 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = popart.art(state, y.to(dtype), beta, sigma_min=sigma_min, sigma_max=sigma_max)
        assert bool(torch.isfinite(state.sigma).all())
        assert bool((state.sigma > 0).all())
        assert bool((state.sigma >= lo).all()) and bool((state.sigma <= hi).all()), (state.sigma, lo, hi)
        # the warning fires exactly when some sigma sits on a bound (both outputs are touched here)
        clipped = popart.sigma_at_bound(state, sigma_min=sigma_min, sigma_max=sigma_max)
        n_warn = sum(issubclass(w.category, popart.SigmaClipWarning) for w in caught)
        expected = int(bool((clipped & (state.sigma <= lo)).any())) + int(bool((clipped & (state.sigma >= hi)).any()))
        assert n_warn == expected, (n_warn, state.sigma, lo, hi)


@SETTINGS
@given(dtype=dtypes, scale=scales, seed=seeds, beta=betas, target_offset=st.floats(-1e3, 1e3))
def test_proposition2_normalized_target_bound(dtype, scale, seed, beta, target_offset):
    gen = torch.Generator().manual_seed(seed)
    old = make_state(1, scale, dtype, gen)
    y = (old.mu.to(F64) + scale * target_offset).to(dtype)
    sigma_min = scale * 1e-8
    new = popart.art(old, y, beta, sigma_min=sigma_min, sigma_max=scale * 1e8)
    yv, mu0, mu1, s1 = (t.item() for t in f64(y.reshape(1), old.mu, new.mu, new.sigma))
    assert s1 > sigma_min * 1.01  # not clipped (sigma' >= sqrt(1 - beta) sigma >= 0.2 e^-3 scale)
    bound = math.sqrt((1 - beta) / beta)
    ratio = abs(yv - mu1) / s1
    slack = 8 * eps(dtype) * (bound + (abs(yv) + abs(mu0)) / s1)
    assert ratio <= bound + slack, (ratio, bound)


@SETTINGS
@given(dtype=dtypes, scale=scales, seed=seeds, k=st.integers(1, 3), use_task_ids=st.booleans())
def test_normalize_unnormalize_round_trip(dtype, scale, seed, k, use_task_ids):
    gen = torch.Generator().manual_seed(seed)
    state = make_state(k, scale, dtype, gen)
    shape = (7,) if use_task_ids else (7, k)
    tids = torch.randint(0, k, shape, generator=gen) if use_task_ids else None
    y = (scale * 20 * torch.randn(shape, dtype=F64, generator=gen)).to(dtype)
    n = popart.normalize(state, y, task_ids=tids)
    assert n.shape == y.shape and n.dtype == dtype

    mu, sigma = f64(state.mu, state.sigma)
    if tids is not None:
        mu, sigma = mu[tids], sigma[tids]
    yd, nd = f64(y, n)
    expect = (yd - mu) / sigma
    e = eps(dtype)
    assert ((nd - expect).abs() <= 4 * e * (expect.abs() + mu.abs() / sigma)).all()

    back = popart.unnormalize(state, n, task_ids=tids)
    assert back.shape == y.shape
    assert ((back.to(F64) - yd).abs() <= 16 * e * (yd.abs() + mu.abs())).all()

    n2 = (torch.randn(shape, dtype=F64, generator=gen) * 5).to(dtype)
    n2_back = popart.normalize(state, popart.unnormalize(state, n2, task_ids=tids), task_ids=tids).to(F64)
    assert ((n2_back - n2.to(F64)).abs() <= 16 * e * (n2.to(F64).abs() + mu.abs() / sigma)).all()
