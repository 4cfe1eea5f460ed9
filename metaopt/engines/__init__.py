r"""One inner loop, three meta-gradient engines: ``torch.func``, ``higher`` and TorchOpt.

An inner loop is described once (:class:`InnerLoop`): a loss on *fast weights* (a dict name -> tensor, used
with :func:`torch.func.functional_call`), the number of steps ``K``, the inner optimizer
(:func:`metaopt.inner_optim.sgd`/:func:`~metaopt.inner_optim.adam`), first-order/truncation, and optionally
PopArt (:class:`PopArtSpec`). One driver runs it (:func:`adapt` for one task, :func:`adapt_tasks` for many);
an engine only supplies the differentiable step:

* ``"func"`` — :func:`torch.func.grad`; :func:`adapt_tasks` vectorizes the tasks with :func:`torch.func.vmap`;
* ``"higher"`` — ``higher.innerloop_ctx(copy_initial_weights=False)``: ``fmodel.update_params`` writes the fast
  weights, ``diffopt.step(loss, grad_callback=...)`` differentiates and applies the update;
* ``"torchopt"`` — ``torchopt.MetaOptimizer`` on the module (state saved with ``extract_state_dict`` and
  restored with ``recover_state_dict``), applying the update through a gradient transformation.

The optimizer math (SGD, momentum, Adam) lives once in :mod:`metaopt.inner_optim`; the engines differentiate
and apply it, so all three take the same inner steps and give the same meta-gradients (tested to 1e-8
relative in float64 for SGD, momentum and Adam, K in {1, 3}, first-order and truncated, with PopArt targets
that depend on the fast weights; measured ~1e-15).

**Semantics of one inner step** ``k`` on fast weights :math:`\theta_k` (statistics :math:`s_k`, batch
:math:`B_k`):

1. ``y = targets(theta_k, B_k, s_k)``; ``s_{k+1} = art(s_k, y, beta)`` (ART);
2. ``(W, b) <- pop(W, b, s_k, s_{k+1})`` on the value head's fast weights (POP: outputs preserved), except at
   ``k = 0`` with ``PopArtSpec(first_pop=False)`` (fresh statistics: the initial head is read as a normalized
   prediction); ART's step is ``beta`` or, with ``debias=True``, :math:`\beta/(1-(1-\beta)^t)`;
3. :math:`g_k = \nabla_\theta L(\theta, B_k, s_{k+1})\big|_{\theta = \theta_k'}` with the statistics held
   **constant** — PopArt's Algorithm 1: the inner update fits the normalized targets; it does not move the
   statistics through the weights (the same in every engine; a target that depends on the weights enters the
   inner gradient only where the loss itself uses it);
4. :math:`\theta_{k+1} = \theta_k' + u_k`, :math:`u_k` the optimizer's update with the (learnable) rate.

The meta-gradient is the total derivative of the outer loss through all of it: through the statistics into
``beta`` and the targets, through the weights (second order) into ``theta_0`` and the rate.

**Memory control.** ``first_order=True`` treats every inner gradient :math:`g_k` as a constant.
``truncate=k`` backpropagates through the last ``k`` steps: the first ``K - k`` steps run without a graph,
then the fast weights become :math:`\theta_0 + \mathrm{sg}(\theta_{K-k} - \theta_0)` (identity Jacobian to
:math:`\theta_0`, which still learns first-order from the early steps) and the optimizer state and statistics
are detached, so the rate and ``beta`` learn from the last ``k`` steps only.

**Per-step batches.** ``batch=per_step(fn)`` draws ``fn(step, params)`` before every step (e.g. trajectories
from the current adapted policy, as MAML-RL does), instead of one fixed batch.

**Non-finite values.** :func:`adapt_tasks` (``check=True``) raises :class:`NonFiniteTaskError` naming the
tasks whose inner loop produced NaN/inf; the loop engines' eager input checks (e.g. non-finite ART targets)
mark the task as failed and the others go on.
"""

from metaopt.engines._driver import (
    ENGINES,
    Engine,
    adapt,
    adapt_tasks,
    adapt_vmap,
    check_tasks,
    make_engine,
    map_tasks,
    require,
)
from metaopt.engines._spec import AdaptResult, InnerLoop, NonFiniteTaskError, PerStep, PopArtSpec, per_step
from metaopt.engines._torchopt import set_module_tensor

__all__ = [
    "ENGINES",
    "AdaptResult",
    "Engine",
    "InnerLoop",
    "NonFiniteTaskError",
    "PerStep",
    "PopArtSpec",
    "adapt",
    "adapt_tasks",
    "adapt_vmap",
    "check_tasks",
    "make_engine",
    "map_tasks",
    "per_step",
    "require",
    "set_module_tensor",
]
