"""Engine-neutral descriptions of an inner loop: :class:`InnerLoop`, :class:`PopArtSpec`, :func:`per_step`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor

from metaopt import popart as pa
from metaopt._validation import NonFiniteValueError, check_bool, check_int, check_real
from metaopt.inner_optim import InnerOptimizer, sgd

__all__ = ["Params", "PopArtSpec", "InnerLoop", "AdaptResult", "PerStep", "per_step", "NonFiniteTaskError"]

Params = dict[str, Tensor]
LossFn = Callable[[Params, Any, "pa.PopArtState | None"], Tensor]
TargetFn = Callable[[Params, Any, "pa.PopArtState"], Tensor]


class NonFiniteTaskError(NonFiniteValueError):
    """Some tasks' inner loops produced NaN/inf (or PopArt statistics left their valid range).

    Attributes:
        tasks: Indices of the offending tasks (within the batch of tasks given to the engine).
    """

    def __init__(self, message: str, tasks: list[int]) -> None:
        super().__init__(message)
        self.tasks = tasks


@dataclass(frozen=True)
class PopArtSpec:
    """PopArt inside an inner loop (validated at construction).

    Attributes:
        weight: Name of the value head's weight among the model's parameters (``[outputs, in]``).
        bias: Name of the value head's bias.
        targets: ``targets(params, batch, state) -> Tensor``: unnormalized targets for ART at the current fast
            weights and the statistics *before* this step's ART update (e.g. bootstrapped returns). The targets
            may depend on ``params``; the meta-gradient flows through them.
        stop_gradient: Detach the new statistics (rlax's behaviour: no meta-gradient into ``beta`` or the
            targets through them).
        debias: Debiased step size (see :func:`metaopt.popart.art`); on by default, the recommended setting (the
            first ART step sets the statistics to the batch's moments instead of moving ``1 - beta`` of the way
            from ``mu = 0, sigma = 1``). Pass ``debias=False`` for rlax's plain exponential average.
        sigma_min: Lower bound of sigma.
        sigma_max: Upper bound of sigma.
        first_pop: POP at the first inner step too. ``False`` (default, the recommended setting) reads the initial
            value head as a *normalized* prediction under the first statistics (no rescale at step 0): the right
            reading when the statistics start fresh for every task (``mu = 0, sigma = 1`` says nothing about the
            task's scale), so that ``theta_0`` learns a scale-free value head instead of one value in raw units.
            ``True`` suits statistics carried over from earlier updates.
    """

    weight: str
    bias: str
    targets: TargetFn
    stop_gradient: bool = False
    debias: bool = True
    sigma_min: float = pa.DEFAULT_SIGMA_MIN
    sigma_max: float = pa.DEFAULT_SIGMA_MAX
    first_pop: bool = False

    def __post_init__(self) -> None:
        for name in ("weight", "bias"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a parameter name (str), got {getattr(self, name)!r}")
        if not callable(self.targets):
            raise TypeError(f"targets must be callable(params, batch, state), got {self.targets!r}")
        check_bool("stop_gradient", self.stop_gradient)
        check_bool("debias", self.debias)
        check_bool("first_pop", self.first_pop)
        check_real("sigma_min", self.sigma_min, low=0.0, low_open=True)
        check_real("sigma_max", self.sigma_max, low=self.sigma_min, low_open=True)


@dataclass(frozen=True)
class InnerLoop:
    """An inner loop, independent of the engine that runs it (validated at construction).

    Attributes:
        loss: ``loss(params, batch, popart_state) -> scalar`` on fast weights ``params`` (name -> tensor, used
            with :func:`torch.func.functional_call`). The statistics it receives are constants for the inner
            gradient (see :mod:`metaopt.engines`).
        steps: Number of inner steps ``K`` (>= 1).
        optimizer: Inner optimizer (:func:`metaopt.inner_optim.sgd` or :func:`metaopt.inner_optim.adam`).
        first_order: Drop second-order terms (inner gradients are constants for the meta-gradient).
        truncate: Backpropagate through the last ``truncate`` steps only (``None``: all ``K``).
        popart: PopArt value normalization, or ``None``.
    """

    loss: LossFn
    steps: int = 1
    optimizer: InnerOptimizer = field(default_factory=sgd)
    first_order: bool = False
    truncate: int | None = None
    popart: PopArtSpec | None = None

    def __post_init__(self) -> None:
        if not callable(self.loss):
            raise TypeError(f"loss must be callable(params, batch, popart_state), got {self.loss!r}")
        check_int("steps", self.steps, low=1)
        check_int(f"truncate (steps={self.steps})", self.truncate, low=0, high=self.steps, allow_none=True)
        if not isinstance(self.optimizer, InnerOptimizer):
            raise TypeError(f"optimizer must be an InnerOptimizer (metaopt.inner_optim.sgd(...) or adam(...)), "
                            f"got {type(self.optimizer).__name__}")
        check_bool("first_order", self.first_order)
        if self.popart is not None and not isinstance(self.popart, PopArtSpec):
            raise TypeError(f"popart must be a PopArtSpec or None, got {type(self.popart).__name__}")

    @property
    def cut(self) -> int:
        """Index of the first step that is backpropagated through (``K - truncate``; 0 without truncation)."""
        return 0 if self.truncate is None else self.steps - self.truncate


class AdaptResult(NamedTuple):
    """Result of an inner loop.

    Attributes:
        params: Adapted fast weights by name (with autograd history to the meta-parameters); stacked on dim 0
            over tasks for :func:`metaopt.engines.adapt_tasks`.
        popart_state: PopArt statistics after the last step (``None`` without PopArt).
        losses: Inner losses, one per step (detached; ``[tasks]`` each for several tasks).
    """

    params: Params
    popart_state: pa.PopArtState | None
    losses: list[Tensor]


@dataclass(frozen=True)
class PerStep:
    """A batch drawn afresh before every inner step: ``fn(step, params) -> batch``.

    ``params`` are the current fast weights (for several tasks: stacked on dim 0, and ``fn`` returns the
    batches stacked on dim 0). Typical use: trajectories sampled with the current adapted policy.
    """

    fn: Callable[[int, Params], Any]

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"fn must be callable(step, params) -> batch, got {self.fn!r}")


def per_step(fn: Callable[[int, Params], Any]) -> PerStep:
    """Mark ``fn(step, params) -> batch`` as a per-step batch source for :func:`metaopt.engines.adapt`."""
    return PerStep(fn)
