"""One-line PopArt POP for the fast weights of your own ``higher`` or TorchOpt inner loop.

In a hand-written inner loop the value head's fast weights do not live in ``model.value.weight`` as an
``nn.Parameter``: TorchOpt's ``MetaOptimizer.step`` writes non-leaf tensors into the module's ``_parameters``,
and ``higher`` keeps them in ``fmodel.fast_params``. After an ART step, POP must rescale *those* tensors, out of
place, so that the meta-gradient flows through them:

.. code-block:: python

    new = popart.art(state, targets, beta)                                  # ART
    metaopt.pop_module_(net, "value.weight", "value.bias", state, new)      # TorchOpt: MetaSGD(net, ...)
    metaopt.pop_fmodel_(fmodel, "value.weight", "value.bias", state, new)   # higher: innerloop_ctx(...)
    state = new

Both return the rescaled ``(weight, bias)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from metaopt import popart as pa
from metaopt.engines import set_module_tensor

__all__ = ["pop_module_", "pop_fmodel_", "fast_param_names"]


def pop_module_(module: nn.Module, weight: str, bias: str, old: pa.PopArtState, new: pa.PopArtState
                ) -> tuple[Tensor, Tensor]:
    r"""POP on a module's current (fast) weights, in the module (:func:`metaopt.popart.pop`).

    ``W <- (sigma / sigma') W``, ``b <- (sigma b + mu - mu') / sigma'``. For TorchOpt's ``MetaSGD``/``MetaAdam``
    (which keep the fast weights in ``module._parameters``), or any module. The rescaled tensors replace the slots
    out of place (never ``.data``), with autograd history.

    Args:
        module: The network.
        weight: Dotted name of the value head's weight (``[outputs, in]``), e.g. ``"value.weight"``.
        bias: Dotted name of its bias.
        old: Statistics before the ART step.
        new: Statistics after it.

    Returns:
        The new ``(weight, bias)`` tensors (now in the module).
    """
    slots = dict(module.named_parameters(remove_duplicate=False))  # the tensors now in the slots (fast weights)
    for arg, name in (("weight", weight), ("bias", bias)):
        if name not in slots:
            names = [n for n, _ in module.named_parameters()]
            raise ValueError(f"{arg}={name!r} is not a parameter slot of the module; expected one of {names}")
    w, b = pa.pop(slots[weight], slots[bias], old, new)
    set_module_tensor(module, weight, w)
    set_module_tensor(module, bias, b)
    return w, b


def fast_param_names(fmodel: Any) -> list[str]:
    """Dotted names of a ``higher`` patched module's ``fast_params``, in their order.

    ``higher`` keeps one fast weight per distinct tensor, in ``parameters()`` order, so a tied weight has one
    name (its first), as in ``named_parameters()``.
    """
    return [n for n, _ in fmodel.named_parameters()]


def pop_fmodel_(fmodel: Any, weight: str, bias: str, old: pa.PopArtState, new: pa.PopArtState
                ) -> tuple[Tensor, Tensor]:
    """POP on a ``higher`` patched module's fast weights: ``fmodel.update_params`` with the rescaled head.

    Args:
        fmodel: The patched module from ``higher.innerloop_ctx`` (or ``higher.monkeypatch``).
        weight: Dotted name of the value head's weight, e.g. ``"value.weight"``.
        bias: Dotted name of its bias.
        old: Statistics before the ART step.
        new: Statistics after it.

    Returns:
        The new ``(weight, bias)`` fast weights.
    """
    if getattr(fmodel, "fast_params", None) is None:
        raise TypeError(f"fmodel must be a higher patched module with fast_params, got {type(fmodel).__name__}")
    names, params = fast_param_names(fmodel), list(fmodel.fast_params)
    for arg, name in (("weight", weight), ("bias", bias)):
        if name not in names:
            raise ValueError(f"{arg}={name!r} is not one of the fast weights; expected one of {names}")
    i, j = names.index(weight), names.index(bias)
    params[i], params[j] = pa.pop(params[i], params[j], old, new)
    fmodel.update_params(params)
    return params[i], params[j]
