"""The Fig. 1a simulation: data, network, hand-written batched SGD, and :func:`simulate` over all seeds at once."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metaopt import popart
from metaopt._validation import check_choice
from metaopt.experiments.popart_regression._protocols import (
    BITS,
    HEAD_INITS,
    HIDDEN,
    MAX_TARGET,
    OUTLIER_PERIOD,
    OUTLIER_TARGET,
    RECORD_CHOICES,
    MethodSpec,
    _check_int,
)

__all__ = ["binary_code", "outlier_positions", "make_targets", "init_params", "simulate", "moving_average"]

Params = list[Tensor]  # [W1, b1, ..., W4, b4, W_head, b_head], each with a leading [seeds] dim

# ------------------------------------------------------------------------------------------------------- data


def binary_code(targets: Tensor, *, bits: int = BITS, dtype: torch.dtype = torch.float32) -> Tensor:
    """Binary code of integer targets, most significant bit first.

    Args:
        targets: Integer tensor of any shape with values in ``[0, 2**bits)``.
        bits: Code length.
        dtype: Dtype of the code.

    Returns:
        ``[*targets.shape, bits]`` tensor of 0/1 values; e.g. ``5 -> [0, ..., 0, 1, 0, 1]``.
    """
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got dtype {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= 2**bits):
        raise ValueError(f"targets must lie in [0, {2**bits}), got range [{int(targets.min())}, {int(targets.max())}]")
    shifts = torch.arange(bits - 1, -1, -1, device=targets.device)
    return ((targets.unsqueeze(-1) >> shifts) & 1).to(dtype)


def outlier_positions(steps: int, *, period: int = OUTLIER_PERIOD) -> list[int]:
    """0-based sample indices that carry the outlier target ``65535``: ``period, 2 period, ... < steps``."""
    return list(range(period, steps, period))


def make_targets(steps: int, generator: torch.Generator) -> Tensor:
    """One seed's target sequence: uniform integers in ``0..1023`` with outliers at :func:`outlier_positions`.

    Args:
        steps: Number of samples.
        generator: Source of randomness (advanced by ``steps`` draws).

    Returns:
        ``[steps]`` int64 tensor.
    """
    targets = torch.randint(0, MAX_TARGET + 1, (steps,), generator=generator)
    targets[outlier_positions(steps)] = OUTLIER_TARGET
    return targets


def init_params(
    generator: torch.Generator, *, dtype: torch.dtype = torch.float32, head_init: str = "default"
) -> Params:
    """One seed's network ``16 -> 4 x tanh(10) -> 1`` with PyTorch's default ``nn.Linear`` init.

    Each layer draws its weight (``kaiming_uniform_(a=sqrt(5))``) then its bias (``U(+-1/sqrt(fan_in))``)
    from ``generator``, exactly as ``nn.Linear.reset_parameters`` does from the global generator. With
    ``head_init="ones"`` the output layer is then set to ``weight = 1, bias = 0`` (its random draws are still
    made, so the body and everything drawn later from ``generator`` are the same for both inits).

    Args:
        generator: Source of randomness.
        dtype: Parameter dtype.
        head_init: ``"default"`` or ``"ones"`` (see :data:`HEAD_INITS`).

    Returns:
        ``[W1, b1, ..., W4, b4, W_head, b_head]`` with ``W_l`` of shape ``[out, in]``, ``b_l`` of shape
        ``[out]``, the head as ``W_head [1, 10]`` and ``b_head [1]``.
    """
    check_choice("head_init", head_init, HEAD_INITS)
    params: Params = []
    sizes = (BITS, *HIDDEN, 1)
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = torch.empty(fan_out, fan_in, dtype=dtype)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(fan_in)
        b = torch.nn.init.uniform_(torch.empty(fan_out, dtype=dtype), -bound, bound, generator=generator)
        params += [w, b]
    if head_init == "ones":
        params[-2], params[-1] = torch.ones_like(params[-2]), torch.zeros_like(params[-1])
    return params


# ------------------------------------------------------------------------------------------------- training


def _forward(params: Params, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Batched forward pass: ``x [S, 16]`` -> normalized output ``n [S]`` and activations (input first)."""
    acts = [x]
    for w, b in zip(params[0:-2:2], params[1:-2:2], strict=True):
        acts.append(torch.tanh(torch.baddbmm(b.unsqueeze(-1), w, acts[-1].unsqueeze(-1)).squeeze(-1)))
    return _head(params[-2], params[-1], acts[-1]), acts


def _head(weight: Tensor, bias: Tensor, h: Tensor) -> Tensor:
    """``n = W h + b`` per seed for ``weight [S, 10]``, ``bias [S]``, ``h [S, 10]``."""
    return (weight * h).sum(-1) + bias


def _sgd_step(params: Params, acts: list[Tensor], delta: Tensor, lr: float) -> Params:
    r"""SGD on ``½ δ²`` per seed with ``δ = n(x) − ŷ`` (``delta [S]``), by hand-written backpropagation.

    With ``h_l = tanh(W_l h_{l-1} + b_l)`` and ``g_l = ∂L/∂h_l``: ``∂L/∂z_l = g_l ⊙ (1 − h_l²)``,
    ``∂L/∂W_l = ∂L/∂z_l h_{l-1}ᵀ``, ``∂L/∂b_l = ∂L/∂z_l``, ``g_{l-1} = W_lᵀ ∂L/∂z_l``; the head gives
    ``∂L/∂W = δ h_Lᵀ``, ``∂L/∂b = δ`` and ``g_L = δ W``. Returns ``θ − α ∇θ`` for every parameter.
    """
    w_head = params[-2]
    d = delta.unsqueeze(-1)
    grads = [d * acts[-1], delta]
    g = d * w_head
    n_layers = len(params) // 2 - 1
    for layer in range(n_layers - 1, -1, -1):
        w = params[2 * layer]
        gz = g * (1 - acts[layer + 1] ** 2)
        grads = [gz.unsqueeze(-1) * acts[layer].unsqueeze(-2), gz, *grads]
        if layer:
            g = torch.bmm(gz.unsqueeze(-2), w).squeeze(-2)
    return [p - lr * gp for p, gp in zip(params, grads, strict=True)]


def simulate(spec: MethodSpec, params: Params, targets: Tensor, inputs: Tensor, *, record: str = "before") -> Tensor:
    r"""Train one method on all seeds at once, one sample per step.

    Per step ``t`` (seeds in parallel), with ``n = n(x_t)`` the current normalized output:

    * SGD: record ``(n − Y_t)²``, then one SGD step on ``½ (n − Y_t)²``.
    * ART/PopArt: ``new = art(state, Y_t, beta)``; for PopArt ``(W, b) = pop(W, b, state, new)`` and
      ``n' = n(x_t)`` with the rescaled head (for ART ``n' = n``). Record the squared test error
      ``(σ n + μ − Y_t)²`` with the old statistics (``record="before"``) or ``(σ' n' + μ' − Y_t)²`` with the
      new ones (``record="after"``); then one SGD step on ``½ (n' − (Y_t − μ')/σ')²``.

    With POP both records agree up to rounding (POP preserves ``f(x_t)``); for ART they differ by
    ``(σ' − σ) n + μ' − μ``.

    Args:
        spec: Method hyperparameters.
        params: Batched initial parameters (``[S, ...]``, see :func:`init_params`; the head as
            ``W [S, 10]``, ``b [S]``). Not modified.
        targets: ``[steps, S]`` float targets.
        inputs: ``[steps, S, 16]`` binary codes of the targets.
        record: ``"before"`` or ``"after"`` (see :data:`RECORD_CHOICES`).

    Returns:
        ``[S, steps]`` squared test errors (dtype of ``targets``).
    """
    check_choice("record", record, RECORD_CHOICES)
    state = popart.init(targets.shape[1], like=targets)
    errors = []
    with torch.no_grad():
        for y, x in zip(targets, inputs, strict=True):
            n, acts = _forward(params, x)
            if spec.beta is None:
                errors.append((n - y) ** 2)
                params = _sgd_step(params, acts, n - y, spec.lr)
                continue
            new = popart.art(state, y, spec.beta)
            n_new = n
            if spec.pop:
                params = [*params[:-2], *popart.pop(params[-2], params[-1], state, new)]
                n_new = _head(params[-2], params[-1], acts[-1])
            pred = popart.unnormalize(new, n_new) if record == "after" else popart.unnormalize(state, n)
            errors.append((pred - y) ** 2)
            state = new
            params = _sgd_step(params, acts, n_new - popart.normalize(new, y), spec.lr)
    return torch.stack(errors, dim=1)


def moving_average(x: Tensor, window: int) -> Tensor:
    """Trailing moving average along the last dim; the first ``window - 1`` entries average what exists.

    Args:
        x: ``[..., T]`` values.
        window: Window width (>= 1).

    Returns:
        ``[..., T]`` averages (float64).
    """
    _check_int("window", window, 1)
    c = torch.cumsum(x.to(torch.float64), dim=-1)
    lagged = torch.cat([torch.zeros_like(c[..., :window]), c[..., :-window]], dim=-1)[..., : c.shape[-1]]
    counts = torch.arange(1, c.shape[-1] + 1, dtype=torch.float64).clamp(max=window)
    return (c - lagged) / counts
