r"""Arithmetic of one meta-iteration, and the machine's achievable matmul rate.

**FLOPs of a meta-iteration** (matrix products only; bias adds, ReLUs, softmax and the returns are a few percent
and not counted). The network (:class:`metaopt.rl.ActorCritic`) is ``Linear(S, H)-ReLU-Linear(H, H)-ReLU`` with a
policy head ``Linear(H, A)`` and a value head ``Linear(H, 1)``; the observation is a one-hot state, multiplied
densely. One row (one visited state) costs, forward,

.. math::

    F = 2\,(S H + H^2 + H A + H), \qquad f_1 = 2 S H \text{ (the first layer)}.

Backward, the weight gradients cost ``F`` per row and the input gradients ``F - f_1`` (the observation needs
none), so a backward pass costs ``2F - f_1``. Differentiating that backward pass once more (the meta-gradient
through the inner step :math:`\theta' = \theta - \alpha \nabla L_{in}(\theta)`) costs ``6F - 4 f_1`` per row:
each weight-gradient product :math:`X^\top \delta` yields two products (``F + (F - f_1)``), each input-gradient
product :math:`\delta W^\top` two more (``2 (F - f_1)``), and the cotangents reaching the activations run back
through the forward pass (``F + (F - f_1)``).

Per task, with ``N = B T`` visited states per rollout (``B`` trajectories of ``T`` steps) and ``R`` rows of
bootstrap values per loss (metaopt: ``R = B``, the state after the last step; TorchOpt's loss: ``R = N``, a
forward pass on every next observation), one meta-iteration with one inner step costs

.. math::

    \underbrace{2 N F}_{\text{two rollouts}}
    + \underbrace{2 (N + R) F}_{\text{inner and outer loss, forward}}
    + \underbrace{2 N (2F - f_1)}_{\text{inner and outer backward}}
    + \underbrace{N (6F - 4 f_1)}_{\text{backward through the inner gradient}}
    = N (14 F - 6 f_1) + 2 R F.

At TorchOpt's configuration (``S = 10, A = 5, H = 32``: ``F = 3072``, ``f_1 = 640``; 40 tasks x 20 x 10)
that is 318 MFLOP per meta-iteration for metaopt's per-visit path (``state_table=False``, ``R = B``), 13.0
forward passes' worth per visited state.

**State table** (``MAMLConfig.state_table``, the default): observations are one-hot states, so every forward
pass runs on the ``S`` states once and the visits are gathered. The rollout of the shared ``theta_0`` is one
pass of ``S`` rows for all tasks; everything else is per task on ``S`` rows:

.. math::

    S F + \text{tasks} \cdot \big(S\,(13 F - 6 f_1) + 8 N S A + 12 N S + 4 B S\big)

(the post-adaptation rollout ``S F``, the two loss forwards ``2 S F``, the two backwards ``2 S (2F - f_1)``, the
backward through the inner gradient ``S (6F - 4 f_1)``; the visits are selected from the tables by products with
the one-hot observations, ``8 N S A + 12 N S + 4 B S`` over the forward and backward passes): 18.7 MFLOP at
TorchOpt's configuration, 17x less.
The count equals ``torch.utils.flop_counter.FlopCounterMode``'s for metaopt's engines and for the baselines
(``tests/test_bench.py``).

**Achievable rate**: :func:`matmul_rate` times ``torch.mm`` into a preallocated output: a large square product
(the machine's practical peak) and the job's shape (``8000 x 32`` times ``32 x 32``: 40 tasks x 200 states
through a hidden layer).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from metaopt._validation import check_int
from metaopt.maml import MAMLConfig

__all__ = ["forward_flops", "iteration_flops", "matmul_rate", "machine_rates", "JOB_SHAPE", "PEAK_SHAPE"]

#: ``(m, k, n)`` of the peak measurement: a ``1024 x 1024`` by ``1024 x 1024`` product.
PEAK_SHAPE = (1024, 1024, 1024)
#: ``(m, k, n)`` of the job-shaped measurement: ``8000 x 32`` by ``32 x 32``.
JOB_SHAPE = (8000, 32, 32)


def forward_flops(num_states: int, num_actions: int, hidden: int) -> tuple[int, int]:
    """FLOPs of one row through the actor-critic: ``(F, f_1)`` (whole forward pass, first layer).

    Args:
        num_states: Observation size ``S``.
        num_actions: Actions ``A``.
        hidden: Hidden width ``H``.
    """
    first = 2 * num_states * hidden
    return first + 2 * (hidden * hidden + hidden * num_actions + hidden), first


def iteration_flops(cfg: MAMLConfig, *, bootstrap: str = "last") -> int:
    """Matrix-product FLOPs of one meta-iteration (module docstring).

    ``tasks * (N (14F - 6 f_1) + 2 R F)`` per visit (``cfg.state_table`` off, or the baselines with
    ``bootstrap="all"``); ``S F + tasks * (S (13 F - 6 f_1) + 8 N S A + 12 N S + 4 B S)`` with metaopt's state table.

    Args:
        cfg: The configuration: one inner step, full second order, no PopArt (TorchOpt's setting).
        bootstrap: ``"last"`` (metaopt: bootstrap values of the state after the last step, ``R = B``) or
            ``"all"`` (TorchOpt's loss: a forward pass on every next observation, ``R = N``).

    Raises:
        ValueError: A configuration the formula does not cover, or an unknown ``bootstrap``.
    """
    if bootstrap not in ("last", "all"):
        raise ValueError(f"bootstrap must be 'last' or 'all', got {bootstrap!r}")
    unsupported = {"inner_steps": (cfg.num_inner_steps, 1), "popart": (cfg.popart, False),
                   "first_order": (cfg.first_order, False), "truncate": (cfg.truncate, None)}
    bad = {k: v for k, (v, want) in unsupported.items() if v != want}
    if bad:
        raise ValueError(f"iteration_flops covers one full second-order inner step without PopArt; got {bad}")
    f, f1 = forward_flops(cfg.num_states, cfg.num_actions, cfg.hidden)
    n = cfg.trajectories * cfg.episode_length
    if cfg.state_table and bootstrap == "last":
        s, a, b = cfg.num_states, cfg.num_actions, cfg.trajectories
        return s * f + cfg.tasks * (s * (13 * f - 6 * f1) + 8 * n * s * a + 12 * n * s + 4 * b * s)
    r = cfg.trajectories if bootstrap == "last" else n
    return cfg.tasks * (n * (14 * f - 6 * f1) + 2 * r * f)


def matmul_rate(
    m: int, k: int, n: int, *, dtype: torch.dtype = torch.float32, device: str = "cpu", min_time_s: float = 0.2,
    repeats: int = 3,
) -> dict[str, Any]:
    """Achieved FLOP rate of ``torch.mm`` of an ``m x k`` by a ``k x n`` matrix (output preallocated).

    Each of ``repeats`` rounds times as many back-to-back products as fill ``min_time_s``; the best round is
    reported (the least disturbed by other processes).

    Args:
        m: Rows of the left factor.
        k: Inner dimension.
        n: Columns of the right factor.
        dtype: Floating dtype.
        device: ``cpu`` or a CUDA device (synchronized around each round).
        min_time_s: Length of one timed round.
        repeats: Timed rounds.

    Returns:
        ``shape``, ``dtype``, ``flops`` (``2 m k n``), ``seconds`` (per product, best round) and ``gflops``.
    """
    for name, v in (("m", m), ("k", k), ("n", n), ("repeats", repeats)):
        check_int(name, v, low=1)
    if not min_time_s > 0:
        raise ValueError(f"min_time_s must be > 0, got {min_time_s!r}")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen, dtype=dtype).to(device)
    b = torch.randn(k, n, generator=gen, dtype=dtype).to(device)
    out = torch.empty(m, n, dtype=dtype, device=device)

    def sync() -> None:
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)

    torch.mm(a, b, out=out)
    sync()
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    sync()
    one = max(time.perf_counter() - t0, 1e-7)
    count = max(1, int(min_time_s / one))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(count):
            torch.mm(a, b, out=out)
        sync()
        best = min(best, (time.perf_counter() - t0) / count)
    flops = 2 * m * k * n
    return {"shape": [m, k, n], "dtype": str(dtype).removeprefix("torch."), "flops": flops, "seconds": best,
            "gflops": flops / best / 1e9}


def machine_rates(*, dtype: torch.dtype = torch.float32, device: str = "cpu", min_time_s: float = 0.2) -> dict:
    """:func:`matmul_rate` at :data:`PEAK_SHAPE` (``peak``) and :data:`JOB_SHAPE` (``job_shape``)."""
    return {"peak": matmul_rate(*PEAK_SHAPE, dtype=dtype, device=device, min_time_s=min_time_s),
            "job_shape": matmul_rate(*JOB_SHAPE, dtype=dtype, device=device, min_time_s=min_time_s)}
