"""Normalized SGD (PopArt paper, Algorithm 2): the head kept unnormalized, the body gradient rescaled."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metaopt._validation import check_positive, check_task_ids
from metaopt.popart._state import PopArtState, _check_state

__all__ = ["normalized_sgd_step"]


def normalized_sgd_step(
    body_params: Sequence[Tensor],
    features: Tensor,
    weight: Tensor,
    bias: Tensor,
    targets: Tensor,
    state: PopArtState,
    lr: float | Tensor,
    *,
    task_ids: Tensor | None = None,
    create_graph: bool = False,
) -> tuple[list[Tensor], Tensor, Tensor]:
    r"""One step of Normalized SGD (PopArt paper, Algorithm 2), out of place.

    The head is kept *unnormalized*: ``W~ = sigma W``, ``b~ = sigma b + mu``. With the prediction error
    :math:`\tilde\delta = \tilde W h + \tilde b - Y` (averaged over the batch):

    .. math::
        \theta \leftarrow \theta - \alpha J_\theta^\top (\tilde W/\sigma)^\top \tilde\delta/\sigma, \quad
        \tilde W \leftarrow \tilde W - \alpha \tilde\delta h^\top, \quad
        \tilde b \leftarrow \tilde b - \alpha \tilde\delta.

    The body gradient is the plain one scaled by ``1/sigma^2`` per output. Call :func:`art` on the targets
    first to get ``state`` (no POP is needed: the unnormalized head is unaffected by new statistics). By
    Proposition 3, from the same start this equals SGD with Pop-Art (Algorithm 1).

    Args:
        body_params: Parameters of the body that ``features`` was computed from (with autograd history).
        features: ``[B, in_features]`` body output ``h``.
        weight: ``[num_outputs, in_features]`` unnormalized head weight ``W~``.
        bias: ``[num_outputs]`` unnormalized head bias ``b~``.
        targets: ``[B]`` (one output or with ``task_ids``) or ``[B, num_outputs]`` unnormalized targets.
        state: Statistics after this step's ART update.
        lr: Step size ``alpha`` (> 0).
        task_ids: Optional ``[B]`` integer tensor: sample ``i`` trains output ``task_ids[i]`` only.
        create_graph: Keep the graph of the step (for meta-gradients through it).

    Returns:
        ``(new_body_params, new_weight, new_bias)``.
    """
    _check_state(state)
    check_positive("lr", lr)
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features must be [B, in_features] matching weight [num_outputs, in_features]={tuple(weight.shape)}, "
            f"got {tuple(features.shape)}"
        )
    bsz, k = features.shape[0], weight.shape[0]
    if task_ids is None:
        if targets.shape not in ((bsz, k),) and not (k == 1 and targets.shape == (bsz,)):
            raise ValueError(f"targets must have shape [B, num_outputs]=[{bsz}, {k}], got {tuple(targets.shape)}")
        y = targets.reshape(bsz, k)
        mask = torch.ones_like(y)
    else:
        if targets.shape != (bsz,):
            raise ValueError(f"targets must have shape [B]=[{bsz}] with task_ids, got {tuple(targets.shape)}")
        check_task_ids("task_ids", task_ids, k, torch.Size((bsz,)))
        y = targets.unsqueeze(-1).expand(bsz, k)
        mask = (task_ids.unsqueeze(-1) == torch.arange(k, device=task_ids.device)).to(y.dtype)
    if state.num_outputs != k:
        raise ValueError(f"state must have num_outputs={k} (the head's rows), got {state.num_outputs}")

    delta = mask * (features @ weight.T + bias - y) / bsz  # [B, K], d loss / d prediction
    body_err = delta / state.sigma**2
    body_grads = torch.autograd.grad(
        features, list(body_params), grad_outputs=body_err @ weight, create_graph=create_graph
    )
    if not create_graph:
        delta = delta.detach()
        features = features.detach()
    new_body = [p - lr * g for p, g in zip(body_params, body_grads, strict=True)]
    return new_body, weight - lr * delta.T @ features, bias - lr * delta.sum(0)
