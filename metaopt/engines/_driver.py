"""The one inner-loop driver: the unroll, truncation, PopArt step, first-order handling and task batching.

Everything an inner step means is written here once (:func:`_task_step`, :func:`_unroll`); an engine only
supplies ``step(params, loss_fn, update_fn)`` (differentiate, apply the updates, return the new weights).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, Protocol

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from metaopt import inner_optim
from metaopt import popart as pa
from metaopt._validation import NonFiniteValueError, check_choice, check_int, is_concrete
from metaopt.engines._func import FuncEngine
from metaopt.engines._higher import HigherEngine
from metaopt.engines._spec import AdaptResult, InnerLoop, NonFiniteTaskError, Params, PerStep
from metaopt.engines._torchopt import TorchOptEngine
from metaopt.inner_optim import InnerOptState
from metaopt.meta_params import MetaParameters

__all__ = ["ENGINES", "Engine", "require", "make_engine", "adapt", "adapt_tasks", "adapt_vmap", "map_tasks"]

#: The engines by name (``engine=`` of :func:`adapt` and :func:`adapt_tasks`, ``--engine`` of the CLI).
ENGINES = ("func", "higher", "torchopt")
Step = Callable[[Params, Callable[[Params], Tensor], Callable[[Params], Params]], tuple[Params, Tensor]]


class Engine(Protocol):
    """What an engine supplies: a context (set-up/tear-down) with one differentiable step."""

    name: str
    vectorized: bool

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def step(
        self, params: Params, loss_fn: Callable[[Params], Tensor], update_fn: Callable[[Params], Params]
    ) -> tuple[Params, Tensor]:
        """Return ``params + update_fn(grad loss_fn(params))`` (differentiable) and the detached loss."""
        ...


def require(module: str) -> Any:
    """Import an optional engine library or fail with one message naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - exercised with a monkeypatched import in tests
        raise ImportError(
            f"engine={module!r} needs the optional dependency {module!r}, which is not installed: "
            f"pip install 'metaopt-torch[{module}]' (or pip install -c constraints.txt '.[{module}]')"
        ) from err


def make_engine(engine: str, model: nn.Module) -> AbstractContextManager[Engine]:
    """The engine adapter named ``engine`` for ``model`` (a context manager)."""
    check_choice("engine", engine, ENGINES)
    if engine == "func":
        return FuncEngine(model)
    if engine == "higher":
        return HigherEngine(model, require("higher"))
    return TorchOptEngine(model, require("torchopt"))


# ------------------------------------------------------------------------------------------- semantics
def _popart_step(inner: InnerLoop, k: int, params: Params, batch: Any, state: pa.PopArtState, beta: Tensor
                 ) -> tuple[Params, pa.PopArtState]:
    """ART on the targets at the current weights, then POP on the value head (not at k = 0 without ``first_pop``)."""
    spec = inner.popart
    assert spec is not None
    y = spec.targets(params, batch, state)
    new = pa.art(state, y, beta, stop_gradient=spec.stop_gradient, debias=spec.debias,
                 sigma_min=spec.sigma_min, sigma_max=spec.sigma_max)
    if k == 0 and not spec.first_pop:
        return params, new
    out = dict(params)
    out[spec.weight], out[spec.bias] = pa.pop(params[spec.weight], params[spec.bias], state, new)
    return out, new


def _task_step(
    step: Step, inner: InnerLoop, k: int, lr: Mapping[str, Tensor], beta: Tensor, stop_grads: bool,
    params: Params, batch: Any, state: pa.PopArtState | None, opt: InnerOptState,
) -> tuple[Params, pa.PopArtState | None, InnerOptState, Tensor]:
    """Inner step ``k`` of one task: PopArt (ART, POP), then the optimizer step on the loss.

    The loss sees the new statistics as constants: its gradient is taken w.r.t. the fast weights alone
    (PopArt's Algorithm 1), while the meta-gradient flows through the statistics into ``beta`` and the targets.
    """
    if inner.popart is not None:
        assert state is not None
        params, state = _popart_step(inner, k, params, batch, state, beta)
    box: dict[str, InnerOptState] = {}

    def update_fn(grads: Params) -> Params:
        if stop_grads:
            grads = {n: g.detach() for n, g in grads.items()}
        updates, box["opt"] = inner_optim.update(grads, opt, k, lr, inner.optimizer)
        return updates

    params, loss = step(params, lambda p: inner.loss(p, batch, state), update_fn)
    return params, state, box["opt"], loss


def _detach(tree: Any) -> Any:
    return pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tree)


RunStep = Callable[..., tuple[Params, "pa.PopArtState | None", InnerOptState, Tensor]]


def _unroll(run: RunStep, inner: InnerLoop, source: Any, lr: dict[str, Tensor], beta: Tensor, params: Params,
            state: pa.PopArtState | None) -> AdaptResult:
    """The unroll: ``K`` steps of ``run``, with the truncation cut and the per-step batch source.

    ``truncate=k`` (cut ``c = K - k``): steps before ``c`` run on detached tensors (no graph, no memory); at
    ``c`` the weights become ``theta_0 + stopgrad(theta_c - theta_0)`` (identity Jacobian to ``theta_0``) and
    the optimizer state and statistics are detached, so ``lr`` and ``beta`` learn from the last ``k`` steps.
    """
    cut, init, live = inner.cut, params, (lr, beta)
    if cut > 0:
        params, state, lr, beta = _detach((params, state, lr, beta))
    opt, losses = inner_optim.init_state(), []
    for k in range(inner.steps + 1):
        if k == cut and cut > 0:
            lr, beta = live
            params = {n: init[n] + (p - init[n]).detach() for n, p in params.items()}
            opt, state = _detach((opt, state))
        if k == inner.steps:
            break
        batch = source.fn(k, params) if isinstance(source, PerStep) else source
        params, state, opt, loss = run(k, lr, beta, inner.first_order or k < cut, params, batch, state, opt)
        losses.append(loss)
    return AdaptResult(params, state, losses)


# ------------------------------------------------------------------------------------------- batching
def _single(step: Step, inner: InnerLoop) -> RunStep:
    return partial(_task_step, step, inner)


def _vmapped(step: Step, inner: InnerLoop, randomness: str) -> RunStep:
    def run(k: int, lr: Any, beta: Tensor, stop: bool, params: Params, batch: Any, state: Any, opt: Any) -> Any:
        one = partial(_task_step, step, inner, k, lr, beta, stop)
        sd = None if state is None else 0  # no statistics: None in, None out
        out_dims: Any = (0, sd, 0, 0)  # torch's annotation omits the None entries vmap accepts
        vmapped = torch.func.vmap(one, in_dims=(0, 0, sd, 0), out_dims=out_dims, randomness=randomness)
        return vmapped(params, batch, state, opt)

    return run


def _task(tree: Any, i: int) -> Any:
    """Task ``i`` of a tree of task-stacked tensors (other leaves as they are)."""
    return pytree.tree_map(lambda t: t[i] if isinstance(t, Tensor) else t, tree)


def _nan_like(tree: Any) -> Any:
    """``tree`` with every tensor replaced by NaNs of its shape."""
    return pytree.tree_map(lambda t: torch.full_like(t, float("nan")) if isinstance(t, Tensor) else t, tree)


def _looped(step: Step, inner: InnerLoop, n: int, failed: dict[int, str]) -> RunStep:
    """Tasks one after another; a task whose step raises a non-finite-value error gets NaN outputs."""

    def run(k: int, lr: Any, beta: Tensor, stop: bool, params: Params, batch: Any, state: Any, opt: Any) -> Any:
        outs: list[Any] = [None] * n
        for i in range(n):
            if i in failed:
                continue
            try:
                outs[i] = _task_step(step, inner, k, lr, beta, stop, *_task((params, batch, state, opt), i))
            except NonFiniteValueError as err:
                failed[i] = f"inner step {k}: {err}"
        ok = [o for o in outs if o is not None]
        if len(ok) < n:
            nan = _nan_like(ok[0]) if ok else _nan_output(params, state)
            outs = [nan if o is None else o for o in outs]
        return pytree.tree_map(lambda *ts: torch.stack(ts) if isinstance(ts[0], Tensor) else ts[0], *outs)

    return run


def _nan_output(params: Params, state: Any) -> Any:
    """NaN outputs of one task's step when every task has failed, built from the inputs.

    The optimizer state is empty: a failed task is never stepped again, so nothing reads it.
    """
    one, task_state = _nan_like(_task((params, state), 0))
    return one, task_state, inner_optim.init_state(), next(iter(one.values())).sum()


def _num_tasks(batches: Any, popart_state: pa.PopArtState | None, num_tasks: int | None) -> int:
    if num_tasks is not None:
        return check_int("num_tasks", num_tasks, low=1)
    leaves = [t for t in pytree.tree_leaves((batches, popart_state)) if isinstance(t, Tensor) and t.dim() > 0]
    if not leaves:
        raise ValueError("num_tasks must be given when neither the batches (a per_step source) nor popart_state "
                         "carry a leading task dimension")
    n = leaves[0].shape[0]
    bad = [tuple(t.shape) for t in leaves if t.shape[0] != n]
    if bad:
        raise ValueError(f"batches and popart_state must all be stacked over the same number of tasks on dim 0; "
                         f"got {n} and shapes {bad[:3]}")
    return int(n)


def check_tasks(result: AdaptResult, failed: Mapping[int, str] | set[int] | None = None) -> None:
    """Checked mode: raise :class:`NonFiniteTaskError` naming tasks with non-finite weights, losses or statistics.

    Runs on the concrete results after the transform (inside ``vmap`` values cannot be read); a no-op when
    the results are themselves wrapped by an outer ``torch.func`` transform.
    """
    bad = set(failed or ())
    why = {i: (failed[i] if isinstance(failed, Mapping) else
               "its inputs failed an eager check (e.g. non-finite PopArt targets)") for i in bad}
    # Every symptom, in the order things happen: the steps' losses (loss[0] non-finite: the first batch, e.g. its
    # rewards, or theta_0), then the statistics, then the final weights.
    leaves: dict[str, Tensor] = {f"loss[{k}]": t for k, t in enumerate(result.losses)}
    if result.popart_state is not None:
        leaves |= {"popart_state.mu": result.popart_state.mu, "popart_state.sigma": result.popart_state.sigma}
    leaves |= {f"params[{n!r}]": p for n, p in result.params.items()}
    found: dict[int, list[str]] = {}
    for name, t in leaves.items():
        if not is_concrete(t):
            return
        mask = ~torch.isfinite(t.detach()).reshape(t.shape[0], -1).all(1)
        if name == "popart_state.sigma":
            mask |= (t.detach() <= 0).reshape(t.shape[0], -1).any(1)
        for i in mask.nonzero().flatten().tolist():
            bad.add(i)
            found.setdefault(i, []).append(name)
    for i, names in found.items():
        if i not in why:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            first = " (the first inner loss: check the first batch, e.g. its rewards)" if names[0] == "loss[0]" else ""
            why[i] = f"non-finite {shown}{first}"
    if bad:
        detail = ", ".join(f"task {i}: {why[i]}" for i in sorted(bad))
        raise NonFiniteTaskError(f"the inner loop produced non-finite values in task(s) {sorted(bad)} ({detail})",
                                 sorted(bad))


# ------------------------------------------------------------------------------------------------- API
def _prepare(model: nn.Module, inner: InnerLoop, meta: MetaParameters, state: pa.PopArtState | None,
             params: Mapping[str, Tensor] | None) -> tuple[Params, dict[str, Tensor], Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(inner, InnerLoop):
        raise TypeError(f"inner must be an InnerLoop, got {type(inner).__name__}")
    if not isinstance(meta, MetaParameters):
        raise TypeError(f"meta must be a MetaParameters, got {type(meta).__name__}")
    names = [n for n, _ in model.named_parameters()]
    if inner.popart is not None:
        if state is None:
            raise ValueError("popart_state must be given (metaopt.popart.init(...)) when the inner loop uses PopArt")
        if not isinstance(state, pa.PopArtState):
            raise TypeError(f"popart_state must be a PopArtState, got {type(state).__name__}")
        for attr in ("weight", "bias"):
            name = getattr(inner.popart, attr)
            if name not in names:
                raise ValueError(f"popart.{attr}={name!r} is not a parameter of the model; expected one of {names}")
        weight, outs = dict(model.named_parameters())[inner.popart.weight], state.mu.shape[-1]
        if weight.dim() != 2 or weight.shape[0] != outs:
            raise ValueError(f"popart.weight={inner.popart.weight!r} (PopArtSpec) must be the value head's "
                             f"[outputs, in] weight with one row per PopArt statistic ({outs}, popart_state's last "
                             f"dim), got shape {tuple(weight.shape)}: expected a Linear(in, {outs}) value head")
    lr_dtype = next((t.dtype for t in meta.buffers()), None) or next((t.dtype for t in meta.parameters()), None)
    p_dtype = next((p.dtype for p in model.parameters()), None)
    if lr_dtype is not None and p_dtype is not None and lr_dtype != p_dtype:
        raise TypeError(f"meta (MetaParameters) has dtype {lr_dtype} but the model's parameters {p_dtype}: expected "
                        f"the same dtype, e.g. MetaParameters(..., dtype={p_dtype})")
    start = dict(model.named_parameters()) if params is None else dict(params)
    if sorted(start) != sorted(names):
        raise ValueError(f"params must name exactly the model's parameters {names}, got {list(start)}")
    return {n: start[n] for n in names}, meta.lr_by_name(names), meta.beta


def adapt(
    model: nn.Module,
    inner: InnerLoop,
    batch: Any,
    meta: MetaParameters,
    *,
    engine: str = "func",
    popart_state: pa.PopArtState | None = None,
    params: Mapping[str, Tensor] | None = None,
    check: bool = True,
) -> AdaptResult:
    """Run the inner loop on one task and return differentiable fast weights.

    Args:
        model: The network; its parameters are ``theta_0`` unless ``params`` is given.
        inner: The inner loop.
        batch: The task's inner-loop data, passed unchanged to ``inner.loss`` and ``popart.targets``; or
            :func:`per_step` ``(fn)`` to draw a new batch before every step with ``fn(step, params)``.
        meta: Inner learning rate(s) and PopArt beta (learned or fixed).
        engine: ``"func"``, ``"higher"`` or ``"torchopt"``.
        popart_state: Initial PopArt statistics (required when ``inner.popart`` is set).
        params: Optional starting fast weights by name (default: the model's parameters).
        check: Checked mode (as :func:`adapt_tasks`'): raise :class:`NonFiniteTaskError` (``tasks=[0]``) if the
            weights, a loss or the PopArt statistics came out non-finite; ``check=False`` returns them as they are.

    Returns:
        An :class:`AdaptResult`. Backpropagating an outer loss through ``result.params`` gives
        meta-gradients w.r.t. ``theta_0``, ``meta.log_lr`` and ``meta.logit_beta``. The model's own
        parameters are left as they were.
    """
    check_choice("engine", engine, ENGINES)
    start, lr, beta = _prepare(model, inner, meta, popart_state, params)
    with make_engine(engine, model) as eng:
        res = _unroll(_single(eng.step, inner), inner, batch, lr, beta, start, popart_state)
    if check:
        _check_single(res)
    return res


def _check_single(result: AdaptResult) -> None:
    """Checked mode of :func:`adapt`: the one task's weights, losses and statistics must be finite."""
    leaves = {f"params[{n!r}]": p for n, p in result.params.items()} | {
        f"loss[{k}]": t for k, t in enumerate(result.losses)}
    if result.popart_state is not None:
        leaves |= {"popart_state.mu": result.popart_state.mu, "popart_state.sigma": result.popart_state.sigma}
    if not all(is_concrete(t) for t in leaves.values()):
        return  # inside an outer torch.func transform: values cannot be read
    bad = [name for name, t in leaves.items() if not bool(torch.isfinite(t.detach()).all())]
    if bad:
        raise NonFiniteTaskError(f"the inner loop produced non-finite values ({', '.join(bad[:4])}"
                                 f"{', ...' if len(bad) > 4 else ''}); expected finite weights and losses (a smaller "
                                 "lr?)", [0])


def adapt_tasks(
    model: nn.Module,
    inner: InnerLoop,
    batches: Any,
    meta: MetaParameters,
    *,
    engine: str = "func",
    popart_state: pa.PopArtState | None = None,
    params: Mapping[str, Tensor] | None = None,
    num_tasks: int | None = None,
    check: bool = True,
    randomness: str = "error",
) -> AdaptResult:
    """Run the inner loop on several tasks from the same ``theta_0``: ``vmap`` for ``func``, a loop otherwise.

    Args:
        model: The network (``theta_0`` shared by all tasks).
        inner: The inner loop.
        batches: The tasks' data stacked on dim 0 of every tensor leaf (a pytree), or :func:`per_step` ``(fn)``
            whose ``fn(step, params)`` receives all tasks' fast weights stacked on dim 0 and returns stacked
            batches.
        meta: Meta-parameters (shared by all tasks).
        engine: ``"func"`` (vectorized with :func:`torch.func.vmap`), ``"higher"`` or ``"torchopt"`` (tasks
            one after another, in lockstep).
        popart_state: Per-task initial statistics stacked on dim 0 (each ``[tasks, outputs]``), or ``None``.
        params: Optional shared starting weights.
        num_tasks: Number of tasks (needed only when neither ``batches`` nor ``popart_state`` is stacked).
        check: Checked mode: after the loop, raise :class:`NonFiniteTaskError` naming the tasks whose weights,
            losses or statistics are non-finite (value checks cannot run inside ``vmap``; this runs on the
            concrete results). With ``check=False`` such tasks come back as NaN.
        randomness: ``vmap``'s randomness mode, if the loss samples.

    Returns:
        An :class:`AdaptResult` whose tensors carry a leading task dimension.
    """
    check_choice("engine", engine, ENGINES)
    check_choice("randomness", randomness, ("error", "different", "same"))
    if isinstance(popart_state, pa.PopArtState) and any(t.dim() != 2 for t in popart_state):
        raise ValueError("popart_state must hold per-task statistics, each field [tasks, outputs] (build them with "
                         "metaopt.popart.init_tasks(num_tasks)); got mu "
                         f"{tuple(popart_state.mu.shape)}, sigma {tuple(popart_state.sigma.shape)}, count "
                         f"{tuple(popart_state.count.shape)} (popart.init(n) is one task with n outputs)")
    start, lr, beta = _prepare(model, inner, meta, popart_state, params)
    n = _num_tasks(None if isinstance(batches, PerStep) else batches, popart_state, num_tasks)
    stacked = {k: p.expand(n, *p.shape) for k, p in start.items()}
    failed: dict[int, str] = {}
    with make_engine(engine, model) as eng:
        run = _vmapped(eng.step, inner, randomness) if eng.vectorized else _looped(eng.step, inner, n, failed)
        res = _unroll(run, inner, batches, lr, beta, stacked, popart_state)
    if check:
        check_tasks(res, failed)
    return res


def adapt_vmap(
    model: nn.Module,
    inner: InnerLoop,
    batches: Any,
    meta: MetaParameters,
    *,
    popart_state: pa.PopArtState | None = None,
    params: Mapping[str, Tensor] | None = None,
    randomness: str = "error",
    check: bool = True,
) -> AdaptResult:
    """The ``func`` engine vectorized over tasks: ``adapt_tasks(..., engine="func")``."""
    return adapt_tasks(model, inner, batches, meta, engine="func", popart_state=popart_state, params=params,
                       randomness=randomness, check=check)


def map_tasks(fn: Callable[..., Tensor], *args: Any, engine: str = "func") -> Tensor:
    """``fn`` applied per task to args stacked on dim 0 (``None`` args are passed as ``None``).

    ``vmap`` for the ``func`` engine, a Python loop + ``torch.stack`` for the others (whose adapted weights
    come from a loop too) — e.g. the outer losses of :func:`adapt_tasks`' results. In the loop, a task whose
    eager input checks find non-finite values gives NaN (as under ``vmap``) instead of stopping the others.
    """
    check_choice("engine", engine, ENGINES)
    if engine == "func":
        dims = tuple(None if a is None else 0 for a in args)
        return torch.func.vmap(fn, in_dims=dims)(*args)
    n = next(t.shape[0] for t in pytree.tree_leaves(args) if isinstance(t, Tensor))
    outs: list[Tensor | None] = []
    for i in range(n):
        try:
            outs.append(fn(*_task(args, i)))
        except NonFiniteValueError:  # a task whose inputs are non-finite (e.g. a failed inner loop) gives NaN
            outs.append(None)
    ok = next((o for o in outs if o is not None), None)
    if ok is None:
        raise NonFiniteTaskError(f"every task's inputs are non-finite ({list(range(n))})", list(range(n)))
    return torch.stack([_nan_like(ok) if o is None else o for o in outs])
