"""POP (the output-preserving rescale of the last layer), and normalizing/unnormalizing with the statistics."""

from __future__ import annotations

from torch import Tensor

from metaopt._validation import check_same_dtype, check_task_ids
from metaopt.popart._state import PopArtState, _check_state

__all__ = ["pop", "normalize", "unnormalize"]


def _select(state: PopArtState, task_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    if task_ids is None:
        return state.mu, state.sigma
    return state.mu[task_ids], state.sigma[task_ids]


def pop(
    weight: Tensor, bias: Tensor, old: PopArtState, new: PopArtState, *, task_ids: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""POP: rescale the last linear layer so unnormalized outputs are preserved (Proposition 1).

    .. math::
        W' = \frac{\sigma}{\sigma'} W, \qquad b' = \frac{\sigma b + \mu - \mu'}{\sigma'}

    so that :math:`\sigma' (W' h + b') + \mu' = \sigma (W h + b) + \mu` for every ``h``. Out of place and
    differentiable w.r.t. all inputs.

    Args:
        weight: ``[rows, in_features]`` (``nn.Linear`` layout; row ``i`` is scaled).
        bias: ``[rows]``.
        old: Statistics before the ART step.
        new: Statistics after the ART step.
        task_ids: Optional ``[rows]`` integer tensor naming which statistic each row uses. Without it,
            ``rows`` must equal ``num_outputs`` and row ``i`` uses statistic ``i``.

    Returns:
        ``(weight', bias')``.

    Raises:
        ValueError: shape mismatches; on concrete values, a state with ``sigma <= 0`` or non-finite
            ``sigma``/``mu`` (the rescale would give inf/NaN).
        TypeError: non-PopArtState statistics or mixed dtypes.
    """
    _check_state(old, "old")
    _check_state(new, "new")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(
            f"weight must be a [rows, in_features] tensor, got {getattr(weight, 'shape', type(weight).__name__)}"
        )
    if not isinstance(bias, Tensor) or bias.shape != weight.shape[:1]:
        raise ValueError(
            f"bias must have shape [rows]=[{weight.shape[0]}] to match weight, got "
            f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}"
        )
    check_same_dtype(weight=weight, bias=bias, **{"old.mu": old.mu, "new.mu": new.mu})
    if old.num_outputs != new.num_outputs:
        raise ValueError(f"new must have num_outputs={old.num_outputs} like old, got {new.num_outputs}")
    if task_ids is None:
        if weight.shape[0] != old.num_outputs:
            raise ValueError(
                f"weight must have num_outputs={old.num_outputs} rows when task_ids is None, got {weight.shape[0]}"
            )
    else:
        check_task_ids("task_ids", task_ids, old.num_outputs, weight.shape[:1])
    mu_old, sigma_old = _select(old, task_ids)
    mu_new, sigma_new = _select(new, task_ids)
    return weight * (sigma_old / sigma_new).unsqueeze(-1), (sigma_old * bias + mu_old - mu_new) / sigma_new


def _broadcast_stats(state: PopArtState, x: Tensor, task_ids: Tensor | None, name: str) -> tuple[Tensor, Tensor]:
    _check_state(state)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    check_same_dtype(**{"state.mu": state.mu, name: x})
    if task_ids is not None:
        check_task_ids("task_ids", task_ids, state.num_outputs, x.shape)
        return _select(state, task_ids)
    if state.num_outputs > 1 and (x.dim() == 0 or x.shape[-1] != state.num_outputs):
        raise ValueError(
            f"{name} must have a last dimension of size num_outputs={state.num_outputs} when task_ids is None, "
            f"got shape {tuple(x.shape)}"
        )
    if x.dim() == 0:  # one output, scalar input: keep the result 0-dim ("same shape as y")
        return state.mu.squeeze(-1), state.sigma.squeeze(-1)
    return state.mu, state.sigma


def normalize(state: PopArtState, y: Tensor, *, task_ids: Tensor | None = None) -> Tensor:
    r"""Normalize targets: :math:`\tilde y = (y - \mu) / \sigma`.

    Args:
        state: Statistics.
        y: Targets; broadcast like :func:`art`'s ``targets`` (last dim = outputs, or any shape for one
            output), or indexed by ``task_ids`` of the same shape.
        task_ids: Optional integer tensor with ``y``'s shape.

    Returns:
        Normalized targets, same shape as ``y``.

    Raises:
        ValueError: on concrete values, ``state.sigma <= 0`` or non-finite statistics (skipped inside
            ``torch.func`` transforms, where values cannot be read); shape mismatches.
    """
    mu, sigma = _broadcast_stats(state, y, task_ids, "y")
    return (y - mu) / sigma


def unnormalize(state: PopArtState, n: Tensor, *, task_ids: Tensor | None = None) -> Tensor:
    r"""Unnormalize outputs: :math:`f = \sigma n + \mu`.

    Args:
        state: Statistics.
        n: Normalized outputs (same layout rules as :func:`normalize`).
        task_ids: Optional integer tensor with ``n``'s shape.

    Returns:
        Unnormalized values, same shape as ``n``.

    Raises:
        ValueError: on concrete values, ``state.sigma <= 0`` or non-finite statistics (skipped inside
            ``torch.func`` transforms); shape mismatches.
    """
    mu, sigma = _broadcast_stats(state, n, task_ids, "n")
    return sigma * n + mu
