"""One inner loop, three meta-gradient engines: ``torch.func``, ``higher`` and TorchOpt.

An inner loop is described once (:class:`InnerLoop`): a loss on *fast weights* (a dict name -> tensor,
used with :func:`torch.func.functional_call`), the number of differentiable steps, the inner optimizer,
and optionally PopArt (:class:`PopArtSpec`). :func:`adapt` runs it on any engine:

* ``"func"`` — native ``torch.func.grad`` with metaopt's functional optimizers; the whole call is
  vectorizable over tasks with ``torch.func.vmap`` (see :func:`adapt_vmap`).
* ``"higher"`` — ``higher.innerloop_ctx(copy_initial_weights=False)``, learnable rates through
  ``override={"lr": ...}``, PopArt's POP applied with ``fmodel.update_params``.
* ``"torchopt"`` — ``torchopt.MetaSGD``/``MetaAdam`` (or a chained transform for per-parameter rates),
  module state saved with ``extract_state_dict`` and restored with ``recover_state_dict`` after the task.

Each inner step with PopArt does, on the current fast weights ``theta_k``:

1. ``y = spec.targets(theta_k, batch, state)`` — unnormalized targets;
2. ``state' = art(state, y, beta)`` with the (learnable) ``beta``;
3. ``(W, b) <- pop(W, b, state, state')`` on the value head's *fast* weights;
4. ``theta_{k+1} = opt(theta_k, grad L(theta_k; state'))`` with the (learnable) rate.

The engines differ only in how step 4 is differentiated and applied, so the same problem yields the
same meta-gradient in all three (tested to 1e-8 relative in float64).

Memory control: ``first_order=True`` drops second-order terms (``theta_{k+1} = theta_k - lr *
stopgrad(g)``); ``truncate=k`` backpropagates through the last ``k`` steps only: at step ``K - k`` the
fast weights become ``theta_0 + stopgrad(theta_{K-k} - theta_0)`` (an identity Jacobian to ``theta_0``,
so the initialization still learns, first-order, from the earlier steps), and the optimizer state and
PopArt statistics are detached, so ``lr`` and ``beta`` receive gradient from the last ``k`` steps only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from metaopt import inner_optim
from metaopt import popart as pa
from metaopt.inner_optim import InnerOptimizer
from metaopt.meta_params import MetaParameters

__all__ = [
    "ENGINES",
    "PopArtSpec",
    "InnerLoop",
    "AdaptResult",
    "adapt",
    "adapt_vmap",
    "require",
]

ENGINES = ("func", "higher", "torchopt")
TORCHOPT_EPS_ROOT_FLOOR = 1e-30

Params = dict[str, Tensor]
LossFn = Callable[[Params, Any, "pa.PopArtState | None"], Tensor]
TargetFn = Callable[[Params, Any, "pa.PopArtState"], Tensor]


def require(module: str) -> Any:
    """Import an optional engine library or fail with one message naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - exercised with a monkeypatched import in tests
        raise ImportError(
            f"engine={module!r} needs the optional dependency {module!r}, which is not installed: "
            f"pip install 'metaopt[{module}]' (or pip install -c constraints.txt '.[{module}]')"
        ) from err


@dataclass(frozen=True)
class PopArtSpec:
    """PopArt inside an inner loop.

    Attributes:
        weight: Name of the value head's weight among the model's parameters (``[outputs, in]``).
        bias: Name of the value head's bias.
        targets: ``targets(params, batch, state) -> Tensor`` unnormalized targets for ART (e.g. returns).
        stop_gradient: Detach the new statistics (no meta-gradient to ``beta`` through them).
        debias: Debiased step size (see :func:`metaopt.popart.art`).
        sigma_min: Lower bound of sigma.
        sigma_max: Upper bound of sigma.
    """

    weight: str
    bias: str
    targets: TargetFn
    stop_gradient: bool = False
    debias: bool = False
    sigma_min: float = pa.DEFAULT_SIGMA_MIN
    sigma_max: float = pa.DEFAULT_SIGMA_MAX


@dataclass(frozen=True)
class InnerLoop:
    """An inner loop, independent of the engine that runs it.

    Attributes:
        loss: ``loss(params, batch, popart_state) -> scalar`` on fast weights ``params`` (name -> tensor).
        steps: Number of differentiable inner steps ``K`` (>= 1).
        optimizer: Inner optimizer kind and its non-learned hyperparameters.
        first_order: Drop second-order terms (treat inner gradients as constants).
        truncate: Backpropagate through the last ``truncate`` steps only (``None`` = all ``K``).
        popart: PopArt value normalization, or ``None``.
    """

    loss: LossFn
    steps: int = 1
    optimizer: InnerOptimizer = field(default_factory=InnerOptimizer)
    first_order: bool = False
    truncate: int | None = None
    popart: PopArtSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        t = self.truncate
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.steps):
            raise ValueError(f"truncate must be None or an int in [0, steps={self.steps}], got {self.truncate!r}")
        if not isinstance(self.optimizer, InnerOptimizer):
            raise TypeError(f"optimizer must be an InnerOptimizer, got {type(self.optimizer).__name__}")
        self.optimizer.validate()
        if not callable(self.loss):
            raise TypeError(f"loss must be callable(params, batch, popart_state), got {self.loss!r}")


class AdaptResult(NamedTuple):
    """Result of an inner loop.

    Attributes:
        params: Adapted fast weights by name (with autograd history to the meta-parameters).
        popart_state: PopArt statistics after the last step (``None`` without PopArt).
        losses: Inner losses, one per step (for logging; detached).
    """

    params: Params
    popart_state: pa.PopArtState | None
    losses: list[Tensor]


# --------------------------------------------------------------------------------------------- shared
def _popart_step(
    spec: PopArtSpec, params: Params, batch: Any, state: pa.PopArtState, beta: Tensor | float
) -> tuple[Params, pa.PopArtState]:
    """ART on the targets, then POP on the value head's fast weights."""
    y = spec.targets(params, batch, state)
    new = pa.art(
        state, y, beta, stop_gradient=spec.stop_gradient, debias=spec.debias,
        sigma_min=spec.sigma_min, sigma_max=spec.sigma_max,
    )
    w, b = pa.pop(params[spec.weight], params[spec.bias], state, new)
    out = dict(params)
    out[spec.weight], out[spec.bias] = w, b
    return out, new


def _straight_through(params: Params, init: Mapping[str, Tensor]) -> Params:
    """``theta_0 + stopgrad(theta - theta_0)``: same values, identity Jacobian to ``theta_0``."""
    return {n: init[n] + (p - init[n]).detach() for n, p in params.items()}


def _detach_state(state: pa.PopArtState | None) -> pa.PopArtState | None:
    return None if state is None else pa.PopArtState(*(t.detach() for t in state))


def _check_common(model: nn.Module, inner: InnerLoop, meta: MetaParameters, state: pa.PopArtState | None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(inner, InnerLoop):
        raise TypeError(f"inner must be an InnerLoop, got {type(inner).__name__}")
    if not isinstance(meta, MetaParameters):
        raise TypeError(f"meta must be a MetaParameters, got {type(meta).__name__}")
    names = dict(model.named_parameters())
    if inner.popart is not None:
        if state is None:
            raise ValueError("popart_state must be given (metaopt.popart.init(...)) when the inner loop uses PopArt")
        for attr in ("weight", "bias"):
            name = getattr(inner.popart, attr)
            if name not in names:
                raise ValueError(
                    f"popart.{attr}={name!r} is not a parameter of the model; expected one of {list(names)}"
                )
    if meta.per_parameter is not None:
        missing = [n for n in names if n not in meta.per_parameter]
        if missing:
            raise ValueError(f"meta.per_parameter must name every model parameter; missing {missing}")


# ----------------------------------------------------------------------------------------------- func
def _adapt_func(
    inner: InnerLoop, batch: Any, meta: MetaParameters, params: Params, state: pa.PopArtState | None
) -> AdaptResult:
    lr, beta = meta.lr(), meta.beta()
    init = dict(params)
    opt_state = inner_optim.init_state()
    losses: list[Tensor] = []
    cut = inner.steps - inner.truncate if inner.truncate is not None else 0
    # Steps before the truncation point get no meta-gradient (their effect on theta_0 is the identity, on lr and
    # beta zero), so they run on detached tensors: no graph is kept for them and memory does not grow with K.
    lr_live, beta_live = lr, beta
    if cut > 0:
        params = {n: p.detach() for n, p in params.items()}
        state = _detach_state(state)
        lr = {n: v.detach() for n, v in lr.items()} if isinstance(lr, dict) else lr.detach()
        beta = beta.detach()
    for k in range(inner.steps + 1):
        if k == cut and cut > 0:
            lr, beta = lr_live, beta_live
            params = _straight_through(params, init)
            opt_state = inner_optim.InnerOptState(
                opt_state.step, {n: t.detach() for n, t in opt_state.mu.items()},
                {n: t.detach() for n, t in opt_state.nu.items()},
            )
            state = _detach_state(state)
        if k == inner.steps:
            break
        if inner.popart is not None:
            params, state = _popart_step(inner.popart, params, batch, state, beta)

        def loss_of(p: Params, _state: pa.PopArtState | None = state) -> tuple[Tensor, Tensor]:
            loss = inner.loss(p, batch, _state)
            return loss, loss.detach()

        grads, loss = torch.func.grad(loss_of, has_aux=True)(params)
        if inner.first_order or k < cut:
            grads = {n: g.detach() for n, g in grads.items()}
        params, opt_state = inner_optim.update(params, grads, opt_state, lr, inner.optimizer)
        losses.append(loss)
    return AdaptResult(params, state, losses)


# --------------------------------------------------------------------------------------------- higher
def _torch_optimizer(model: nn.Module, inner: InnerLoop, meta: MetaParameters) -> torch.optim.Optimizer:
    """A plain ``torch.optim`` optimizer whose groups line up with ``meta``'s learning rates."""
    named = list(model.named_parameters())
    if meta.per_parameter is not None:
        groups = [{"params": [p]} for _, p in named]
    else:
        groups = [{"params": [p for _, p in named]}]
    o = inner.optimizer
    if o.kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=o.momentum)
    return torch.optim.Adam(groups, lr=0.1, betas=o.betas, eps=o.eps)


def _adapt_higher(
    model: nn.Module, inner: InnerLoop, batch: Any, meta: MetaParameters, params: Params | None,
    state: pa.PopArtState | None,
) -> AdaptResult:
    higher = require("higher")
    if inner.optimizer.kind == "adam" and inner.optimizer.eps_root:
        raise ValueError(
            f"engine='higher' has no eps_root for Adam; got eps_root={inner.optimizer.eps_root}, expected 0"
        )
    names = [n for n, _ in model.named_parameters()]
    lr = meta.lr()
    lrs = [lr[n] for n in names] if isinstance(lr, dict) else [lr]
    beta = meta.beta()
    opt = _torch_optimizer(model, inner, meta)
    callback = (lambda gs: [None if g is None else g.detach() for g in gs]) if inner.first_order else None
    losses: list[Tensor] = []
    cut = inner.steps - inner.truncate if inner.truncate is not None else 0
    with higher.innerloop_ctx(
        model, opt, copy_initial_weights=False, override={"lr": lrs}, track_higher_grads=True
    ) as (fmodel, diffopt):
        if params is not None:
            fmodel.update_params([params[n] for n in names])
        init = dict(zip(names, fmodel.fast_params, strict=True))
        for k in range(inner.steps + 1):
            current = dict(zip(names, fmodel.fast_params, strict=True))
            if k == cut and cut > 0:
                current = _straight_through(current, init)
                fmodel.update_params([current[n] for n in names])
                for group_state in diffopt.state:
                    for p_state in group_state.values():
                        for key, val in list(p_state.items()):
                            if isinstance(val, Tensor):
                                p_state[key] = val.detach()
                state = _detach_state(state)
            if k == inner.steps:
                break
            if inner.popart is not None:
                current, state = _popart_step(inner.popart, current, batch, state, beta)
                fmodel.update_params([current[n] for n in names])
            loss = inner.loss(current, batch, state)
            diffopt.step(loss, grad_callback=callback)
            losses.append(loss.detach())
        fast = dict(zip(names, fmodel.fast_params, strict=True))
    return AdaptResult(fast, state, losses)


# ------------------------------------------------------------------------------------------- torchopt
def _set_tensor(model: nn.Module, name: str, value: Tensor) -> None:
    """Put ``value`` into the module slot of parameter ``name`` (as TorchOpt's MetaOptimizer does)."""
    prefix, _, leaf = name.rpartition(".")
    model.get_submodule(prefix)._parameters[leaf] = value


def _torchopt_impl(torchopt: Any, model: nn.Module, inner: InnerLoop, meta: MetaParameters) -> Any:
    """The TorchOpt gradient transformation: MetaSGD/MetaAdam's chain, with per-parameter rates if asked."""
    o = inner.optimizer
    lr = meta.lr()
    if o.kind == "sgd":
        base = torchopt.transform.trace(momentum=o.momentum, moment_requires_grad=True) if o.momentum else None
    else:
        base = torchopt.transform.scale_by_adam(
            # TorchOpt's sqrt(nu + eps_root) has an infinite derivative at nu = 0, which makes the meta-gradient
            # NaN where a gradient is exactly zero; a floor of 1e-30 keeps it finite and changes sqrt(nu) only
            # where nu < ~1e-28.
            b1=o.betas[0], b2=o.betas[1], eps=o.eps, eps_root=max(o.eps_root, TORCHOPT_EPS_ROOT_FLOOR),
            moment_requires_grad=True
        )
    parts = []
    if inner.first_order:
        def detach_update(updates: Any, state: Any, *, params: Any = None, inplace: bool = True) -> Any:
            return torchopt.pytree.tree_map(lambda g: None if g is None else g.detach(), updates), state

        parts.append(torchopt.base.GradientTransformation(lambda params: torchopt.base.EmptyState(), detach_update))
    if base is not None:
        parts.append(base)
    if isinstance(lr, dict):
        def scale_per_param(updates: Any, state: Any, *, params: Any = None, inplace: bool = True) -> Any:
            by_id = {id(t): lr[n] for n, t in model.named_parameters()}
            return tuple(None if u is None else -by_id[id(p)] * u for u, p in zip(updates, params, strict=True)), state

        parts.append(torchopt.base.GradientTransformation(lambda params: torchopt.base.EmptyState(), scale_per_param))
    else:
        parts.append(torchopt.transform.scale(-lr))
    return torchopt.chain(*parts)


def _adapt_torchopt(
    model: nn.Module, inner: InnerLoop, batch: Any, meta: MetaParameters, params: Params | None,
    state: pa.PopArtState | None,
) -> AdaptResult:
    torchopt = require("torchopt")
    saved = torchopt.extract_state_dict(model, by="reference")
    try:
        if params is not None:
            for n, t in params.items():
                _set_tensor(model, n, t)
        opt = torchopt.MetaOptimizer(model, _torchopt_impl(torchopt, model, inner, meta))
        beta = meta.beta()
        init = dict(model.named_parameters())
        losses: list[Tensor] = []
        cut = inner.steps - inner.truncate if inner.truncate is not None else 0
        for k in range(inner.steps + 1):
            current = dict(model.named_parameters())
            if k == cut and cut > 0:
                for n, t in _straight_through(current, init).items():
                    _set_tensor(model, n, t)
                opt.load_state_dict(
                    torchopt.pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, opt.state_dict())
                )
                state = _detach_state(state)
                current = dict(model.named_parameters())
            if k == inner.steps:
                break
            if inner.popart is not None:
                current, state = _popart_step(inner.popart, current, batch, state, beta)
                _set_tensor(model, inner.popart.weight, current[inner.popart.weight])
                _set_tensor(model, inner.popart.bias, current[inner.popart.bias])
            loss = inner.loss(current, batch, state)
            opt.step(loss)
            losses.append(loss.detach())
        fast = dict(model.named_parameters())
    finally:
        torchopt.recover_state_dict(model, saved)
    return AdaptResult(fast, state, losses)


# ------------------------------------------------------------------------------------------------ API
def adapt(
    model: nn.Module,
    inner: InnerLoop,
    batch: Any,
    meta: MetaParameters,
    *,
    engine: str = "func",
    popart_state: pa.PopArtState | None = None,
    params: Mapping[str, Tensor] | None = None,
) -> AdaptResult:
    """Run the inner loop on one task and return differentiable fast weights.

    Args:
        model: The network; its parameters are ``theta_0`` unless ``params`` is given.
        inner: The inner loop.
        batch: The task's inner-loop data, passed unchanged to ``inner.loss`` and ``popart.targets``.
        meta: Inner learning rate(s) and PopArt beta (learned or fixed).
        engine: ``"func"``, ``"higher"`` or ``"torchopt"``.
        popart_state: Initial PopArt statistics (required when ``inner.popart`` is set).
        params: Optional starting fast weights by name (default: the model's parameters).

    Returns:
        An :class:`AdaptResult`. Its ``params`` can be evaluated with
        ``torch.func.functional_call(model, result.params, inputs)``; backpropagating an outer loss
        through them gives meta-gradients w.r.t. ``theta_0``, ``meta.log_lr`` and ``meta.logit_beta``.
        The model's own parameters are left as they were (TorchOpt's module state is restored).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    _check_common(model, inner, meta, popart_state)
    if engine == "func":
        start = dict(params) if params is not None else dict(model.named_parameters())
        return _adapt_func(inner, batch, meta, start, popart_state)
    start = dict(params) if params is not None else None
    if engine == "higher":
        return _adapt_higher(model, inner, batch, meta, start, popart_state)
    return _adapt_torchopt(model, inner, batch, meta, start, popart_state)


def adapt_vmap(
    model: nn.Module,
    inner: InnerLoop,
    batches: Any,
    meta: MetaParameters,
    *,
    popart_state: pa.PopArtState | None = None,
    params: Mapping[str, Tensor] | None = None,
    randomness: str = "error",
) -> AdaptResult:
    """The ``func`` engine vectorized over tasks with ``torch.func.vmap``.

    Args:
        model: The network (``theta_0`` shared by all tasks).
        inner: The inner loop.
        batches: The tasks' data stacked on dim 0 of every tensor leaf (a pytree).
        meta: Meta-parameters (shared by all tasks).
        popart_state: Per-task initial statistics stacked on dim 0 (each ``[tasks, outputs]``), or ``None``.
        params: Optional shared starting weights.
        randomness: ``vmap``'s randomness mode, if the loss samples.

    Returns:
        An :class:`AdaptResult` whose tensors carry a leading task dimension.
    """
    _check_common(model, inner, meta, popart_state)
    start = dict(params) if params is not None else dict(model.named_parameters())

    def one(batch: Any, state: pa.PopArtState | None) -> tuple[Params, Any, list[Tensor]]:
        res = _adapt_func(inner, batch, meta, start, state)
        return res.params, res.popart_state, res.losses

    def one_without_state(batch: Any) -> tuple[Params, list[Tensor]]:
        res = _adapt_func(inner, batch, meta, start, None)
        return res.params, res.losses

    if popart_state is None:
        p, losses = torch.func.vmap(one_without_state, randomness=randomness)(batches)
        return AdaptResult(p, None, losses)
    p, s, losses = torch.func.vmap(one, randomness=randomness)(batches, popart_state)
    return AdaptResult(p, pa.PopArtState(*s), losses)
