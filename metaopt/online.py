r"""Online meta-gradients: learn the inner lr and PopArt's beta through the updates of one learner's lifetime.

A learner trains for its whole lifetime: its fast weights, its PopArt statistics and its inner-optimizer
state persist from one update to the next (nothing is reset as in MAML). :class:`OnlineMetaLearner` runs
those updates through the library's one inner-loop step (:mod:`metaopt.engines`, any engine) and, every
``k`` updates, takes a meta-gradient step on ``log lr`` and ``logit beta``
(:class:`~metaopt.meta_params.MetaParameters`) — meta-gradient RL (Xu et al., 2018) and hypergradient descent
(Baydin et al., 2018, ``k = 1``) on a PopArt learner.

**Semantics.** Updates are numbered ``t = 0, 1, ...``; update ``t`` trains on batch ``B_t`` exactly as inner
step ``t`` of :func:`metaopt.engines.adapt` does (ART on the targets, POP, one optimizer step with the
statistics held constant; the optimizer's step count is ``t``). The lifetime is cut into windows of
``k = inner.steps`` updates, ``[s, s + k)``. When :meth:`OnlineMetaLearner.step` receives ``B_{s+k}`` — data the
learner has **not** trained on yet — and before training on it:

1. the meta-objective :math:`J = \ell_{meta}(\theta_{s+k}, B_{s+k}, S_{s+k})` is evaluated (``meta_loss``, on the
   weights and statistics after the window) and backpropagated through the window's ``k`` updates into
   ``log lr`` and ``logit beta`` (and, below, through the statistics' whole-lifetime sensitivity);
2. the meta-optimizer (Adam on the log-space parameters by default) steps them;
3. a new window starts from the current values; update ``s + k`` trains on ``B_{s+k}``.

**Truncation and the carried sensitivity.** At a window's start the network is cut from its past: its weights
are constants in *unnormalized* coordinates (:math:`\tilde W = \sigma W`, :math:`\tilde b = \sigma b + \mu`,
which ART+POP leave unchanged), so the network's dependence on earlier hyperparameters is truncated as in
Xu et al. The statistics are not cut. ART's recursion (given the targets) does not involve the network, so
the exact sensitivities :math:`\dot\mu_t = d\mu_t/d\beta`, :math:`\dot\sigma_t = d\sigma_t/d\beta` are carried
forward over the whole lifetime by forward-mode differentiation of :func:`metaopt.popart.art`
(:func:`art_sensitivity`; two scalars per output, like IDBD's traces):

.. math::
    (\dot\mu_t, \dot\sigma_t) = \frac{\partial\, \mathrm{art}}{\partial(\mu, \sigma)}\Big|_{t-1}
    (\dot\mu_{t-1}, \dot\sigma_{t-1}) + \frac{\partial\, \mathrm{art}}{\partial \beta}\Big|_{t-1},
    \qquad \dot\mu_0 = \dot\sigma_0 = 0.

At the window start they are re-attached as :math:`\mu_s + (\beta - \mathrm{sg}\,\beta)\dot\mu_s` (same for
:math:`\sigma`; values unchanged, gradient = the carried sensitivity) and the head is re-expressed in the
re-attached statistics by a POP from the detached ones (values unchanged). So the meta-gradient is exactly the
derivative, at the current values, of this **k-step objective**: recompute the whole lifetime's statistics
with the candidate ``beta``, keep the network's unnormalized weights at the window start, run the window's
``k`` updates with the candidate ``lr`` and ``beta``, evaluate ``meta_loss`` on the next batch. ``carry=False``
drops the sensitivity (statistics detached at the window start, the plain truncated meta-gradient, which suffers
the short-horizon bias of Wu et al. 2018: ``beta`` pays off ~``1/beta`` updates later, beyond any window).
``reattach="normalized"`` keeps the *normalized* head constant instead, so a re-attached statistic moves the
prediction :math:`\sigma n(x) + \mu` directly — a heuristic: under POP the prediction does not move with the
statistics, and this path does not exist in the learner's real dynamics. With ``k`` = the whole lifetime the
meta-gradient is the full one. While ``beta`` is being learned the carried
sensitivity is the trace of the changing ``beta`` (all past steps move together), as IDBD's traces are. When
the targets depend on the weights (bootstrapped returns), the sensitivity treats the targets as given.

**Forward mode** (``mode="forward"``, ``engine="func"``): the exact derivative of the same meta-objective through
the *whole* lifetime, without truncation. With one or two scalar meta-parameters, the tangents
:math:`d(\theta_t, S_t, O_t)/d\eta` (weights, statistics, optimizer state) are carried forward through every
update by :func:`torch.func.jvp` of the update itself (real-time recurrent learning; Williams & Zipser 1989,
Franceschi et al. 2017), at the cost of one Jacobian-vector product per learned scalar per update, and the
meta-gradient is :math:`\partial\ell_{meta}/\partial(\theta, S) \cdot d(\theta, S)/d\eta`. While the
meta-parameters move, the tangents are the trace of the changing values, as in Xu et al. It is the reference
that the truncated modes approximate (tested equal to backpropagation through all updates).

**The meta-objective must not be gameable by the normalization.** A loss in normalized units,
:math:`((y - \mu)/\sigma - n(x))^2`, falls as ``sigma`` grows, so ``beta`` would learn to inflate ``sigma``.
Write ``meta_loss`` in real units over a stop-gradient scale, e.g. :func:`scaled_error` of
:math:`\sigma n(x) + \mu - y` over ``sg(sigma)`` or over a running RMS of the errors, Huber-robust against outliers.
Then with no inner learning (``lr -> 0``) the meta-gradient for ``beta`` is exactly zero: POP preserves
every prediction, and the re-attachment above is itself a POP.

**Populations.** ``learners=S`` runs ``S`` independent learners at once (``vmap`` over a leading dimension of
the weights, statistics and batches; ``engine="func"`` only), each with its own ``lr`` and ``beta`` (the
learned tensors then have shape ``[S]``; Adam is elementwise, so they do not interact).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from metaopt import MetaParameters, InnerLoop, PopArtSpec, popart
    >>> from metaopt.online import OnlineMetaLearner, scaled_error
    >>> net = nn.Linear(2, 1).double()
    >>> def inner_loss(p, batch, s):
    ...     n = torch.func.functional_call(net, p, (batch[0],)).squeeze(-1)
    ...     return 0.5 * ((n - popart.normalize(s, batch[1])) ** 2).mean()
    >>> def meta_loss(p, batch, s):
    ...     pred = popart.unnormalize(s, torch.func.functional_call(net, p, (batch[0],)).squeeze(-1))
    ...     return scaled_error(pred, batch[1], s.sigma, huber=1.0).mean()
    >>> spec = PopArtSpec("weight", "bias", targets=lambda p, batch, s: batch[1], debias=False, first_pop=True)
    >>> learner = OnlineMetaLearner(net, InnerLoop(inner_loss, steps=2, popart=spec),
    ...     MetaParameters(lr=0.1, beta=0.1, learn=("lr", "beta"), dtype=torch.float64), meta_loss,
    ...     popart_state=popart.init(1, like=net.weight))
    >>> for t in range(5):
    ...     info = learner.step((torch.randn(4, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)))
    >>> learner.updates, sorted(learner.values())
    (5, ['beta', 'lr'])
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from metaopt import inner_optim
from metaopt import popart as pa
from metaopt._validation import check_bool, check_choice, check_int, check_positive, check_real
from metaopt.engines import ENGINES, InnerLoop, make_engine
from metaopt.engines._driver import _task_step
from metaopt.engines._func import FuncEngine
from metaopt.inner_optim import InnerOptState
from metaopt.meta_params import MetaParameters

__all__ = ["REATTACH", "MODES", "MetaLossFn", "StepInfo", "OnlineMetaLearner", "art_sensitivity", "scaled_error"]

#: How a window's start re-attaches the carried statistics (see the module docstring).
REATTACH = ("pop", "normalized")
#: How the meta-gradient reaches back: through the last window (``"truncated"``) or the whole lifetime in forward
#: mode (``"forward"``).
MODES = ("truncated", "forward")

Params = dict[str, Tensor]
#: ``meta_loss(params, batch, popart_state) -> scalar``: the meta-objective of one learner on a batch it has not
#: trained on (weights and statistics after the window; the statistics are ``None`` without PopArt).
MetaLossFn = Callable[[Params, Any, "pa.PopArtState | None"], Tensor]


def scaled_error(pred: Tensor, target: Tensor, scale: Tensor | float, *, huber: float | None = None) -> Tensor:
    r"""Per-element meta-loss in real units over a stop-gradient scale, optionally Huber.

    .. math::
        e = \frac{\mathrm{pred} - \mathrm{target}}{\mathrm{sg}(\mathrm{scale})}, \qquad
        \ell(e) = \tfrac12 e^2 \ \text{(no huber)}, \qquad
        \ell(e) = \begin{cases}\tfrac12 e^2 & |e| \le \delta\\ \delta(|e| - \tfrac12\delta) & |e| > \delta\end{cases}

    The scale only sets the units: no gradient flows through it, so a learned normalization cannot shrink
    the loss by inflating it.

    Args:
        pred: Predictions in real (unnormalized) units.
        target: Targets in real units (broadcastable with ``pred``).
        scale: Positive scale (e.g. PopArt's ``sigma`` or a running RMS of errors); detached here.
        huber: Huber threshold ``delta > 0`` in scaled units, or ``None`` for the squared error.

    Returns:
        The elementwise loss.
    """
    if huber is not None:
        check_positive("huber", huber)
    s = scale.detach() if isinstance(scale, Tensor) else scale
    e = (pred - target) / s
    if huber is None:
        return 0.5 * e * e
    return torch.nn.functional.huber_loss(e, torch.zeros_like(e), reduction="none", delta=huber)


def art_sensitivity(
    state: pa.PopArtState,
    tangent: tuple[Tensor, Tensor],
    targets: Tensor,
    beta: Tensor,
    **art_kwargs: Any,
) -> tuple[pa.PopArtState, tuple[Tensor, Tensor]]:
    r"""One ART step and the forward-carried sensitivity of the statistics to ``beta``.

    With :math:`(\mu', \sigma') = \mathrm{art}(\mu, \sigma; y, \beta)` and the incoming sensitivity
    :math:`(\dot\mu, \dot\sigma) = d(\mu, \sigma)/d\beta`, returns the new statistics and

    .. math::
        \dot\mu' = \frac{\partial\mu'}{\partial\mu}\dot\mu + \frac{\partial\mu'}{\partial\sigma}\dot\sigma
        + \frac{\partial\mu'}{\partial\beta}, \qquad
        \dot\sigma' = \frac{\partial\sigma'}{\partial\mu}\dot\mu + \frac{\partial\sigma'}{\partial\sigma}\dot\sigma
        + \frac{\partial\sigma'}{\partial\beta}

    (a Jacobian-vector product of :func:`metaopt.popart.art`, so every option of ``art`` — debiasing, the
    sigma clip, batch rules — is differentiated exactly). For the centered recursion with one target,
    :math:`d = y - \mu`: :math:`\dot\mu' = (1-\beta)\dot\mu + d`, and
    :math:`2\sigma'\dot\sigma' = -(\sigma^2 + \beta d^2) + (1-\beta)(2\sigma\dot\sigma + d^2 - 2\beta d\dot\mu)`.
    Nothing here is differentiable (inputs are detached); the targets are treated as given.

    Args:
        state: Statistics before the step.
        tangent: ``(dmu/dbeta, dsigma/dbeta)`` before the step, shaped like ``state.mu``.
        targets: The step's targets (as for :func:`metaopt.popart.art`).
        beta: The step size (0-dim or ``[num_outputs]`` tensor).
        **art_kwargs: Passed to :func:`metaopt.popart.art` (``debias``, ``sigma_min``, ``task_ids``, ...).

    Returns:
        ``(new_state, (dmu', dsigma'))``.
    """
    state = state.detach()
    targets, beta = targets.detach(), beta.detach()
    count = state.count

    def f(mu: Tensor, sigma: Tensor, b: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        new = pa.art(pa.PopArtState(mu, sigma, count), targets, b, **art_kwargs)
        return (new.mu, new.sigma), new.count

    out: Any = torch.func.jvp(
        f, (state.mu, state.sigma, beta), (tangent[0].detach(), tangent[1].detach(), torch.ones_like(beta)),
        has_aux=True)
    (mu, sigma), (dmu, dsigma), new_count = out
    return pa.PopArtState(mu, sigma, new_count), (dmu, dsigma)


class StepInfo(NamedTuple):
    """What one :meth:`OnlineMetaLearner.step` did.

    Attributes:
        update: Index ``t`` of the update just taken (0-based).
        loss: The inner loss of update ``t`` (detached; ``[S]`` for a population).
        meta_loss: The meta-objective evaluated on this step's batch before training on it (detached;
            ``[S]`` for a population), or ``None`` when no window ended here.
        meta_grad: The meta-gradient applied, by name (``"log_lr"``, ``"logit_beta"``; learned ones only), or
            ``None``.
        lr: The lr used by update ``t`` (detached).
        beta: The beta used by update ``t`` (detached).
    """

    update: int
    loss: Tensor
    meta_loss: Tensor | None
    meta_grad: dict[str, Tensor] | None
    lr: Tensor
    beta: Tensor


def _detach(tree: Any) -> Any:
    return pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tree)


def _zeros_like(tree: Any) -> Any:
    return pytree.tree_map(lambda t: torch.zeros_like(t) if isinstance(t, Tensor) else t, tree)


class OnlineMetaLearner:
    """One learner (or a population of independent learners) that meta-learns its lr and beta online.

    See the module docstring for the semantics. Call :meth:`step` once per batch; every ``k = inner.steps``
    updates it takes a meta-gradient step on this batch before training on it. Call :meth:`close` (or use the
    learner as a context manager) to release the engine at the end.

    Args:
        model: The network; its parameters are the starting weights unless ``params`` is given. Its parameters
            are restored when a window ends (the ``torchopt`` engine writes the fast weights into the module while
            a window is open; :meth:`close` restores them).
        inner: The update (loss, optimizer, PopArt, ``first_order``); ``inner.steps`` is the window ``k``
            (``k = 1``: hypergradient descent). ``inner.truncate`` must be ``None`` (the window is the truncation).
        meta: Initial lr and beta, and which are learned (scalar lr only, not per-parameter rates). A single
            learner steps ``meta``'s own parameters; a population copies them into ``[S]`` tensors
            (:attr:`log_lr`, :attr:`logit_beta`).
        meta_loss: ``meta_loss(params, batch, popart_state) -> scalar`` (per learner); see :func:`scaled_error`.
        engine: ``"func"``, ``"higher"`` or ``"torchopt"`` (a population needs ``"func"``).
        popart_state: Initial statistics (required with ``inner.popart``; ``[S, outputs]`` for a population).
        params: Starting weights by name (``[S, ...]`` stacked for a population; default: the model's, shared).
        learners: ``None`` for one learner, or the population size ``S`` (every batch leaf stacked on dim 0).
        carry: Carry the statistics' whole-lifetime sensitivity to beta (default) or cut it at each window.
        reattach: What stays constant when the statistics are re-attached at a window's start: ``"pop"`` (the
            unnormalized head, exact when the network does not learn) or ``"normalized"`` (the normalized head:
            predictions then move with the statistics; see the module docstring).
        mode: ``"truncated"`` (default: the window's updates by backpropagation, plus the carried statistics) or
            ``"forward"``: the exact derivative of the meta-objective through the *whole* lifetime, by carrying
            the tangents d(weights, statistics, optimizer state)/d(log lr, logit beta) forward through every
            update (real-time recurrent learning over one or two scalars, ``engine="func"``; ``carry`` and
            ``reattach`` do not apply).
        meta_lr: Learning rate of the default meta-optimizer, ``torch.optim.Adam`` on the learned log-space
            parameters.
        meta_optimizer: Optional factory ``params -> torch.optim.Optimizer`` replacing the default.
    """

    def __init__(
        self,
        model: nn.Module,
        inner: InnerLoop,
        meta: MetaParameters,
        meta_loss: MetaLossFn,
        *,
        engine: str = "func",
        popart_state: pa.PopArtState | None = None,
        params: dict[str, Tensor] | None = None,
        learners: int | None = None,
        carry: bool = True,
        reattach: str = "pop",
        mode: str = "truncated",
        meta_lr: float = 3e-2,
        meta_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(inner, InnerLoop):
            raise TypeError(f"inner must be an InnerLoop, got {type(inner).__name__}")
        if not isinstance(meta, MetaParameters):
            raise TypeError(f"meta must be a MetaParameters, got {type(meta).__name__}")
        if not callable(meta_loss):
            raise TypeError(f"meta_loss must be callable(params, batch, popart_state), got {meta_loss!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if inner.truncate is not None:
            raise ValueError(f"inner.truncate must be None (the window inner.steps={inner.steps} is the "
                             f"truncation), got {inner.truncate}")
        if meta.per_parameter is not None:
            raise ValueError("meta.per_parameter must be None: the online learner learns one scalar lr")
        check_int("learners", learners, low=1, allow_none=True)
        if learners is not None and engine != "func":
            raise ValueError(f"a population (learners={learners}) runs vectorized: engine must be 'func', got "
                             f"{engine!r}")
        check_bool("carry", carry)
        check_choice("reattach", reattach, REATTACH)
        check_choice("mode", mode, MODES)
        if mode == "forward" and engine != "func":
            raise ValueError(f"mode='forward' differentiates the update in forward mode (torch.func.jvp): engine must "
                             f"be 'func', got {engine!r}")
        check_real("meta_lr", meta_lr, low=0.0)
        names = [n for n, _ in model.named_parameters()]
        if inner.popart is not None:
            if not isinstance(popart_state, pa.PopArtState):
                raise ValueError("popart_state must be a PopArtState (metaopt.popart.init(...)) when the update "
                                 f"uses PopArt, got {type(popart_state).__name__}")
            for attr in ("weight", "bias"):
                if getattr(inner.popart, attr) not in names:
                    raise ValueError(f"popart.{attr}={getattr(inner.popart, attr)!r} is not a parameter of the "
                                     f"model; expected one of {names}")
        start = dict(model.named_parameters()) if params is None else dict(params)
        if sorted(start) != sorted(names):
            raise ValueError(f"params must name exactly the model's parameters {names}, got {list(start)}")
        if learners is not None and params is None:
            start = {n: p.detach().expand(learners, *p.shape).clone() for n, p in start.items()}

        self.model, self.inner, self.meta, self.meta_loss = model, inner, meta, meta_loss
        self.engine, self.learners, self.carry, self.window = engine, learners, carry, inner.steps
        self.reattach, self.mode = reattach, mode
        self.names = names
        #: Current weights (detached values between windows).
        self.params: Params = {n: start[n].detach() for n in names}
        #: Current PopArt statistics (``None`` without PopArt).
        self.popart_state = None if popart_state is None else popart_state.detach()
        #: Current inner-optimizer state.
        self.opt_state: InnerOptState = inner_optim.init_state()
        #: Carried ``(dmu/dbeta, dsigma/dbeta)`` of the statistics.
        self.sensitivity: tuple[Tensor, Tensor] | None = None
        if self.popart_state is not None:
            self.sensitivity = (torch.zeros_like(self.popart_state.mu), torch.zeros_like(self.popart_state.sigma))
        #: Number of updates taken so far.
        self.updates = 0

        if learners is None:
            self.log_lr, self.logit_beta = meta._tensor("log_lr"), meta._tensor("logit_beta")
        else:
            def copy(t: Tensor, learned: bool) -> Tensor:
                c = t.detach().expand(learners).clone()
                return nn.Parameter(c) if learned else c

            self.log_lr = copy(meta._tensor("log_lr"), "lr" in meta.learn)
            self.logit_beta = copy(meta._tensor("logit_beta"), "beta" in meta.learn)
        self.learned = {n: t for n, t in (("log_lr", self.log_lr), ("logit_beta", self.logit_beta))
                        if (n == "log_lr" and "lr" in meta.learn) or (n == "logit_beta" and "beta" in meta.learn)}
        self.meta_opt: torch.optim.Optimizer | None = None
        if self.learned:
            group = list(self.learned.values())
            self.meta_opt = meta_optimizer(group) if meta_optimizer is not None else torch.optim.Adam(group, lr=meta_lr)
        self._stack: ExitStack | None = None
        self._eng: Any = None
        self._live: tuple[Params, pa.PopArtState | None, InnerOptState] | None = None
        self._hyper: tuple[Tensor, Tensor] | None = None
        self._in_window = 0
        self._tangents: list[Any] | None = None
        self._func = FuncEngine(model)
        if mode == "forward":
            zeros = _zeros_like((self.params, self.popart_state, self.opt_state))
            self._tangents = [zeros for _ in self.learned]

    # ------------------------------------------------------------------------------------------- helpers
    def _map(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn`` on one learner, or ``vmap``-ed over the population's leading dimension."""
        if self.learners is None:
            return fn(*args)
        return torch.func.vmap(fn)(*args)

    def values(self) -> dict[str, Tensor]:
        """The current ``lr`` and ``beta`` (detached; ``[S]`` for a population)."""
        return {"lr": self.log_lr.detach().exp(), "beta": torch.sigmoid(self.logit_beta.detach())}

    def current(self) -> tuple[Params, pa.PopArtState | None]:
        """The current weights and statistics (detached), e.g. to record a test error before :meth:`step`."""
        if self._live is None:
            return dict(self.params), self.popart_state
        params, state, _ = self._live
        return _detach(params), _detach(state)

    def _start_window(self) -> None:
        """Live hyperparameters, re-attached statistics and head, and a fresh engine context."""
        lr, beta = self.log_lr.exp(), torch.sigmoid(self.logit_beta)
        params, state = dict(self.params), self.popart_state
        spec = self.inner.popart
        if spec is not None and self.carry and "beta" in self.meta.learn:
            assert state is not None and self.sensitivity is not None

            def reattach(w: Tensor, b: Tensor, mu: Tensor, sigma: Tensor, count: Tensor, dmu: Tensor,
                         dsigma: Tensor, bt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
                old = pa.PopArtState(mu, sigma, count)
                shift = bt - bt.detach()
                live = pa.PopArtState(mu + shift * dmu, sigma + shift * dsigma, count)
                if self.reattach == "normalized":  # the normalized head is the constant
                    return w, b, live.mu, live.sigma
                w2, b2 = pa.pop(w, b, old, live)  # values unchanged; the unnormalized head is the constant
                return w2, b2, live.mu, live.sigma

            w2, b2, mu2, sigma2 = self._map(reattach, params[spec.weight], params[spec.bias], *state,
                                            *self.sensitivity, beta)
            params[spec.weight], params[spec.bias] = w2, b2
            state = pa.PopArtState(mu2, sigma2, state.count)
        self._stack = ExitStack()
        self._eng = self._stack.enter_context(make_engine(self.engine, self.model))
        self._live = (params, state, self.opt_state)
        self._hyper = (lr, beta)
        self._in_window = 0

    def _end_window(self) -> None:
        assert self._live is not None and self._stack is not None
        self.params, self.popart_state, self.opt_state = _detach(self._live)
        self._stack.close()
        self._stack, self._eng, self._live, self._hyper = None, None, None, None

    def _meta_step(self, batch: Any) -> tuple[Tensor, dict[str, Tensor] | None]:
        assert self._live is not None
        params, state, _ = self._live
        if self.learners is None:
            value = self.meta_loss(params, batch, state)
        else:
            value = torch.func.vmap(self.meta_loss, in_dims=(0, 0, None if state is None else 0))(params, batch,
                                                                                              state)
        grads: dict[str, Tensor] | None = None
        if self.meta_opt is not None and value.requires_grad:
            self.meta_opt.zero_grad()
            value.sum().backward()
            grads = {n: (t.grad.detach().clone() if t.grad is not None else torch.zeros_like(t))
                     for n, t in self.learned.items()}
            self.meta_opt.step()
        self._end_window()
        return value.detach(), grads

    # ------------------------------------------------------------------------------------------------ API
    def step(self, batch: Any) -> StepInfo:
        """Meta-step on ``batch`` if a window of ``k`` updates just ended, then train on ``batch`` (update ``t``).

        Args:
            batch: The next batch (passed to ``inner.loss``, ``popart.targets`` and ``meta_loss``; stacked on
                dim 0 over learners for a population).

        Returns:
            A :class:`StepInfo`.
        """
        if self.mode == "forward":
            return self._step_forward(batch)
        meta_value: Tensor | None = None
        grads: dict[str, Tensor] | None = None
        if self._live is not None and self._in_window == self.window:
            meta_value, grads = self._meta_step(batch)
        if self._live is None:
            self._start_window()
        assert self._live is not None and self._hyper is not None
        params, state, opt = self._live
        lr, beta = self._hyper
        spec = self.inner.popart
        t = self.updates
        if spec is not None and self.carry:
            assert state is not None and self.sensitivity is not None
            targets = self._map(lambda p, b, s: spec.targets(p, b, s).detach(), _detach(params), batch,
                                _detach(state))
            art_kw = {"debias": spec.debias, "sigma_min": spec.sigma_min, "sigma_max": spec.sigma_max}
            _, self.sensitivity = self._map(lambda s, dm, ds, y, b: art_sensitivity(s, (dm, ds), y, b, **art_kw),
                                            _detach(state), *self.sensitivity, targets, beta.detach())
        names = self.names

        def one(lr_i: Tensor, beta_i: Tensor, p: Params, b: Any, s: pa.PopArtState | None, o: InnerOptState
                ) -> tuple[Params, pa.PopArtState | None, InnerOptState, Tensor]:
            rates = dict.fromkeys(names, lr_i)
            return _task_step(self._eng.step, self.inner, t, rates, beta_i, self.inner.first_order, p, b, s, o)

        if self.learners is None:
            out = one(lr, beta, params, batch, state, opt)
        else:
            sd = None if state is None else 0
            out = torch.func.vmap(one, in_dims=(0, 0, 0, 0, sd, 0), out_dims=(0, sd, 0, 0))(  # type: ignore[arg-type]
                lr, beta, params, batch, state, opt)
        params, state, opt, loss = out
        self._live = (params, state, opt)
        self._in_window += 1
        self.updates += 1
        return StepInfo(t, loss.detach(), meta_value, grads, lr.detach(), beta.detach())

    def _step_forward(self, batch: Any) -> StepInfo:
        """``mode="forward"``: meta-step with the exact whole-lifetime derivative, then the update with tangents."""
        assert self._tangents is not None
        t, names, inner = self.updates, self.names, self.inner
        dirs = list(self.learned)
        meta_value: Tensor | None = None
        grads: dict[str, Tensor] | None = None
        if t > 0 and t % self.window == 0:

            def directional(p: Params, s: pa.PopArtState | None, b: Any, tans: list[Any]) -> tuple[Tensor, Tensor]:
                value = self.meta_loss(p, b, s)
                derivs = [torch.func.jvp(lambda p_, s_: self.meta_loss(p_, b, s_), (p, s), (tp, ts))[1]
                          for tp, ts, _ in tans]
                return value, torch.stack(derivs) if derivs else value.new_zeros(0)

            fn = directional if self.learners is None else torch.func.vmap(directional)
            value, derivs = fn(self.params, self.popart_state, batch, self._tangents)
            meta_value = value.detach()
            if self.meta_opt is not None:
                self.meta_opt.zero_grad()
                grads = {}
                for j, name in enumerate(dirs):
                    g = derivs[j] if self.learners is None else derivs[:, j]
                    self.learned[name].grad = g.detach().clone()
                    grads[name] = g.detach().clone()
                self.meta_opt.step()
        log_lr, logit_beta = self.log_lr.detach(), self.logit_beta.detach()

        def one(ll: Tensor, lb: Tensor, p: Params, s: pa.PopArtState | None, o: InnerOptState, b: Any,
                tans: list[Any]) -> tuple[Any, Tensor, list[Any]]:
            def f(ll_: Tensor, lb_: Tensor, p_: Params, s_: Any, o_: Any) -> tuple[Any, Tensor]:
                out = _task_step(self._func.step, inner, t, dict.fromkeys(names, ll_.exp()), torch.sigmoid(lb_),
                                 inner.first_order, p_, b, s_, o_)
                return (out[0], out[1], out[2]), out[3]

            new_tans, primal, loss = [], None, None
            for name, (tp, ts, to) in zip(dirs, tans, strict=True):
                d_ll = torch.ones_like(ll) if name == "log_lr" else torch.zeros_like(ll)
                d_lb = torch.ones_like(lb) if name == "logit_beta" else torch.zeros_like(lb)
                res: Any = torch.func.jvp(f, (ll, lb, p, s, o), (d_ll, d_lb, tp, ts, to), has_aux=True)
                primal, tangent, loss = res
                new_tans.append(tangent)
            if primal is None:
                primal, loss = f(ll, lb, p, s, o)
            assert loss is not None
            return primal, loss, new_tans

        fn2 = one if self.learners is None else torch.func.vmap(one)
        (params, state, opt), loss, tans = fn2(log_lr, logit_beta, self.params, self.popart_state, self.opt_state,
                                              batch, self._tangents)
        self.params, self.popart_state, self.opt_state = _detach((params, state, opt))
        self._tangents = _detach(tans)
        self.updates += 1
        return StepInfo(t, loss.detach(), meta_value, grads, log_lr.exp(), torch.sigmoid(logit_beta))

    def close(self) -> None:
        """Release the engine context of an open window (the weights keep their current values)."""
        if self._live is not None:
            self._end_window()

    def __enter__(self) -> OnlineMetaLearner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
