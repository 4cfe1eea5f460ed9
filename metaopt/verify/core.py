"""Finite-difference checks of autograd (meta-)gradients."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from metaopt._validation import check_int, check_real

__all__ = ["GradientCheck", "GradientReport", "check_gradients", "finite_difference", "relative_error"]


def relative_error(actual: Tensor, reference: Tensor, *, floor: float = 1e-12) -> float:
    r"""Relative error :math:`\|a - r\|_2 / \max(\|r\|_2, \text{floor})`."""
    a, r = actual.detach().double().reshape(-1), reference.detach().double().reshape(-1)
    return float((a - r).norm() / max(float(r.norm()), floor))


def finite_difference(
    objective: Callable[[], Tensor], tensor: Tensor, *, eps: float = 1e-6, max_elements: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    r"""Central finite differences of a scalar ``objective()`` w.r.t. the elements of ``tensor``.

    .. math:: \partial_i L \approx \frac{L(x + \epsilon e_i) - L(x - \epsilon e_i)}{2 \epsilon}

    ``tensor`` is perturbed in place (under ``no_grad``) and restored exactly. When it has more than
    ``max_elements`` entries, a random subset of that many entries is differenced instead.

    Args:
        objective: Recomputes the scalar objective from scratch (it must read ``tensor``).
        tensor: A leaf tensor the objective depends on (float64 recommended).
        eps: Step size.
        max_elements: Optional cap on the number of differenced entries.
        generator: RNG for the subset.

    Returns:
        ``(fd, index)``: the differences ``[n]`` and the flat indices used (``None`` = all, in order).
    """
    check_real("eps", eps, low=0.0, low_open=True)
    check_int("max_elements", max_elements, low=1, allow_none=True)
    flat = tensor.detach().view(-1)  # shares storage with tensor; writes below change tensor itself
    n = flat.numel()
    index = None
    if max_elements is not None and n > max_elements:
        index = torch.randperm(n, generator=generator)[:max_elements]
    idx = index.tolist() if index is not None else range(n)
    out = torch.empty(len(idx), dtype=torch.float64)
    for j, i in enumerate(idx):
        with torch.no_grad():
            orig = flat[i].clone()
            flat[i] = orig + eps
        plus = float(objective().detach())  # with grad enabled: engines may differentiate inside the objective
        with torch.no_grad():
            flat[i] = orig - eps
        minus = float(objective().detach())
        with torch.no_grad():
            flat[i] = orig
        out[j] = (plus - minus) / (2 * eps)
    return out, index


@dataclass
class GradientCheck:
    """One tensor's comparison.

    Attributes:
        name: Tensor name.
        autograd: Autograd gradient entries that were compared.
        reference: Finite-difference (or analytic) entries.
        rel_error: Relative error (see :func:`relative_error`).
        tolerance: Tolerance the error is held to.
    """

    name: str
    autograd: Tensor
    reference: Tensor
    rel_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether the relative error is within tolerance (and finite)."""
        return bool(self.rel_error <= self.tolerance)


@dataclass
class GradientReport:
    """Per-tensor results of :func:`check_gradients`."""

    checks: list[GradientCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every tensor passed."""
        return all(c.passed for c in self.checks)

    def __getitem__(self, name: str) -> GradientCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def table(self) -> str:
        """A plain-text table of the results."""
        rows = [f"{'tensor':<24}{'|autograd|':>14}{'|reference|':>14}{'rel.err':>11}  pass"]
        for c in self.checks:
            rows.append(
                f"{c.name:<24}{float(c.autograd.norm()):>14.6g}{float(c.reference.norm()):>14.6g}"
                f"{c.rel_error:>11.2e}  {'yes' if c.passed else 'NO'}"
            )
        return "\n".join(rows)


def check_gradients(
    objective: Callable[[], Tensor],
    inputs: Mapping[str, Tensor],
    *,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    max_elements: int | None = None,
    seed: int = 0,
) -> GradientReport:
    """Check the autograd gradient of ``objective()`` against central finite differences.

    Args:
        objective: Builds the scalar objective from scratch each call, reading ``inputs`` (e.g. runs the
            inner loop and returns the outer loss). Use float64 for meaningful tolerances.
        inputs: Name -> leaf tensor that requires grad (meta-parameters, ``theta_0``, ...).
        eps: Finite-difference step.
        rtol: Relative tolerance per tensor.
        max_elements: Difference at most this many random entries per tensor.
        seed: Seed for the entry subset.

    Returns:
        A :class:`GradientReport` with one :class:`GradientCheck` per input.

    Raises:
        ValueError: no inputs, an input does not require grad or has no entries, ``eps <= 0``, ``rtol < 0``,
            ``max_elements < 1``, the objective is not a finite scalar, or it has no gradient path to the inputs.
        TypeError: an input or the objective is not float64.
    """
    hint = ("central differences need float64 (in float32 their round-off, ~1e-7 |f| / eps, swamps the "
            "gradient): expected the model, meta-parameters and data in torch.float64 (e.g. model.double(), "
            "MetaParameters(..., dtype=torch.float64))")
    check_real("eps", eps, low=0.0, low_open=True)
    check_real("rtol", rtol, low=0.0)
    check_int("max_elements", max_elements, low=1, allow_none=True)
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(f"inputs must name at least one tensor to check, got {inputs!r}")
    for name, t in inputs.items():
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise ValueError(f"inputs[{name!r}] must be a tensor that requires grad, got {type(t).__name__}")
        if t.numel() == 0:
            raise ValueError(f"inputs[{name!r}] must have at least one entry to compare, got shape {tuple(t.shape)}")
        if t.dtype != torch.float64:
            raise TypeError(f"inputs[{name!r}] must be float64, got dtype {t.dtype}; {hint}")
    value = objective()
    if not isinstance(value, Tensor) or value.numel() != 1 or not torch.isfinite(value).all():
        raise ValueError(f"objective() must return a finite scalar tensor, got {value!r}")
    if value.dtype != torch.float64:
        raise TypeError(f"objective() must return a float64 scalar, got dtype {value.dtype}; {hint}")
    if not value.requires_grad:
        raise ValueError(f"objective() must depend differentiably on the inputs {list(inputs)}, but its value has no "
                         "gradient path (it does not require grad: computed under no_grad, detached, or not from "
                         "the inputs)")
    names = list(inputs)
    grads = torch.autograd.grad(value, [inputs[n] for n in names], allow_unused=True)
    gen = torch.Generator().manual_seed(seed)
    report = GradientReport()
    for name, g in zip(names, grads, strict=True):
        t = inputs[name]
        g = torch.zeros_like(t) if g is None else g
        fd, index = finite_difference(objective, t, eps=eps, max_elements=max_elements, generator=gen)
        auto = g.detach().reshape(-1).double()
        auto = auto[index] if index is not None else auto
        report.checks.append(GradientCheck(name, auto, fd, relative_error(auto, fd), rtol))
    return report
