"""Actor-critic agent, lambda-returns and the A2C loss, with optional PopArt value normalization.

Everything is functional in the parameters (``params`` dicts used with
:func:`torch.func.functional_call`) so the same loss runs as a MAML inner or outer loss on any engine and
under ``torch.func.vmap`` over tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metaopt import estimators
from metaopt import popart as pa
from metaopt._validation import check_bool, check_choice, check_real
from metaopt.engines import InnerLoop, PopArtSpec
from metaopt.envs import Trajectories
from metaopt.inner_optim import InnerOptimizer, sgd

__all__ = [
    "ActorCritic",
    "A2CConfig",
    "Batch",
    "task_major",
    "state_table",
    "lambda_returns",
    "A2CTerms",
    "VALUE_UNITS",
    "a2c_terms",
    "a2c_loss",
    "returns_targets",
    "make_inner_loop",
]

Params = dict[str, Tensor]
#: One task's trajectories (time-major inside a task): observations [T, B, S], actions/rewards/dones [T, B],
#: last_observations [B, S]. Stacked over tasks on dim 0 for ``vmap``.
Batch = dict[str, Tensor]


class ActorCritic(nn.Module):
    """Body ``Linear(S, H)-ReLU-Linear(H, H)-ReLU``, a categorical policy head and a value head.

    The value head outputs *normalized* values ``n(s)`` when PopArt is used (unnormalized
    ``V(s) = sigma n(s) + mu``); without PopArt, ``n(s)`` is the value itself.

    Args:
        num_states: Observation size (one-hot states).
        num_actions: Number of discrete actions.
        hidden: Hidden width.
        device: Device of the parameters (default: torch's default device).
        dtype: Floating dtype of the parameters.
    """

    def __init__(self, num_states: int = 10, num_actions: int = 5, hidden: int = 32, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.body = nn.Sequential(nn.Linear(num_states, hidden, **kw), nn.ReLU(), nn.Linear(hidden, hidden, **kw),
                                  nn.ReLU())
        self.policy = nn.Linear(hidden, num_actions, **kw)
        self.value = nn.Linear(hidden, 1, **kw)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits [..., A], value [...])`` for observations ``[..., S]``."""
        h = self.body(obs)
        return self.policy(h), self.value(h).squeeze(-1)


@dataclass(frozen=True)
class A2CConfig:
    """A2C loss settings (TorchOpt's MAML-RL example values), validated at construction.

    Attributes:
        gamma: Discount.
        lam: GAE/lambda-return parameter.
        value_coef: Weight of the value loss.
        popart_advantages: With PopArt, scale the policy's advantages by ``1/sigma`` (PopArt-IMPALA).
        policy_coef: Weight of the policy term (0 leaves a pure value-regression loss, whose value is a true
            function of the parameters: useful for finite-difference checks of the meta-gradient).
        estimator: The policy term (:mod:`metaopt.estimators`): ``"surrogate"`` (TorchOpt's
            ``-mean(sg(A) log pi)`` with lambda-return advantages), ``"dice"`` (unbiased derivatives of every
            order; Monte-Carlo returns with the value baseline, ``lam`` unused) or ``"lvc"`` (ProMP's low-variance
            curvature, lambda-return advantages).
    """

    gamma: float = 0.99
    lam: float = 0.95
    value_coef: float = 0.5
    popart_advantages: bool = True
    policy_coef: float = 1.0
    estimator: str = "surrogate"

    def __post_init__(self) -> None:
        check_real("gamma", self.gamma, low=0.0, high=1.0)
        check_real("lam", self.lam, low=0.0, high=1.0)
        check_real("value_coef", self.value_coef, low=0.0)
        check_bool("popart_advantages", self.popart_advantages)
        check_real("policy_coef", self.policy_coef, low=0.0)
        check_choice("estimator", self.estimator, tuple(estimators.ESTIMATORS))


#: How the value error is scaled with PopArt (see :func:`a2c_terms`).
VALUE_UNITS = ("normalized", "sg_scale")

DEFAULT_A2C = A2CConfig()


def task_major(traj: Trajectories, *, states: bool = False) -> Batch:
    """Convert simulator output (``[T, N, B, ...]``) to a task-major batch dict (``[N, T, B, ...]``).

    With ``states=True`` the batch also carries the state indices (``states`` ``[N, T, B]``), and the losses of this
    module evaluate the network once per state and select the visits (see :func:`_forward`).
    """
    batch = {
        "observations": traj.observations.transpose(0, 1),
        "actions": traj.actions.transpose(0, 1),
        "rewards": traj.rewards.transpose(0, 1),
        "dones": traj.dones.transpose(0, 1),
        "last_observations": traj.last_observations,
    }
    if states:
        batch["states"] = traj.states.transpose(0, 1)
    return batch


def lambda_returns(
    rewards: Tensor, values: Tensor, last_values: Tensor, dones: Tensor, gamma: float, lam: float
) -> Tensor:
    r"""Lambda-returns over time (dim 0), the backward recursion evaluated in closed form.

    .. math::
        G_i = r_i + \gamma_i\big((1-\lambda) V(s_{i+1}) + \lambda G_{i+1}\big), \quad
        \gamma_i = \gamma (1 - \text{done}_i), \quad G_T = V(s_T),

    i.e. :math:`G_i = \sum_{j \ge i} \big(\prod_{k=i}^{j-1} \lambda\gamma_k\big) \delta_j` with
    :math:`\delta_j = r_j + \gamma_j (1-\lambda) V(s_{j+1})` and :math:`\delta_T = V(s_T)`: one weighted sum
    instead of ``T`` sequential steps (``dones`` must be 0 or 1).

    Args:
        rewards: ``[T, ...]``.
        values: ``[T, ...]`` values ``V(s_i)`` (pass detached values for A2C).
        last_values: ``[...]`` value of the state after the last step.
        dones: ``[T, ...]`` 1.0 where the episode ended at step ``i``.
        gamma: Discount.
        lam: Lambda.

    Returns:
        ``[T, ...]`` returns.
    """
    return estimators.lambda_return_sum(rewards, values, last_values, dones, gamma, lam)


def state_table(model: nn.Module, params: Params, num_states: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The network on every one-hot state: ``(logits [S, A], n [S])`` (one forward pass of ``S`` rows)."""
    eye = torch.eye(num_states, dtype=like.dtype, device=like.device)
    logits, n = functional_call(model, params, (eye,))
    return logits, n


def _forward(model: nn.Module, params: Params, batch: Batch, *, values_only: bool = False
             ) -> tuple[Tensor | None, Tensor, Tensor]:
    """``log pi(a_t|s_t)`` of the taken actions and the normalized values at the visits and after the last step.

    With ``states`` in the batch (one-hot observations of tabular states) the network and the log-softmax run once
    per state and the visits are selected by a product with the one-hot observations, which is exact (every other
    term is a zero): the same values as a forward pass per visit, with ``S`` rows instead of ``T * B``.
    """
    obs, last = batch["observations"], batch["last_observations"]
    if "states" in batch:
        logits, n = state_table(model, params, obs.shape[-1], obs)
        values, last_values = obs @ n, last @ n
        if values_only:
            return None, values, last_values
        logp = (obs @ F.log_softmax(logits, dim=-1)).gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        return logp, values, last_values
    logits, n = functional_call(model, params, (obs,))
    _, n_last = functional_call(model, params, (last,))
    if values_only:
        return None, n, n_last
    return F.log_softmax(logits, dim=-1).gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1), n, n_last


def returns_targets(
    model: nn.Module, params: Params, batch: Batch, state: pa.PopArtState | None, cfg: A2CConfig
) -> Tensor:
    """ART's targets: lambda-returns of ``batch`` bootstrapped from the (unnormalized, detached) values of ``params``.

    Statistics that have never been updated (``state.count == 0``: fresh per-task statistics) do not yet give the
    value head's output any unit, so their first targets are the Monte-Carlo returns (``lambda = 1``, no
    bootstrap): otherwise ``mu = 0, sigma = 1`` would read the initial head's raw output as a return and, for a
    task with small rewards, the bootstrap would dominate the first scale estimate.
    """
    with torch.no_grad():  # the bootstrap values are detached anyway: record no graph for them
        _, n, n_last = _forward(model, params, batch, values_only=True)
    if state is None:
        return lambda_returns(batch["rewards"], n, n_last, batch["dones"], cfg.gamma, cfg.lam)
    v, v_last = pa.unnormalize(state, n).detach(), pa.unnormalize(state, n_last).detach()
    bootstrapped = lambda_returns(batch["rewards"], v, v_last, batch["dones"], cfg.gamma, cfg.lam)
    zero = torch.zeros_like(n_last)
    monte_carlo = lambda_returns(batch["rewards"], torch.zeros_like(n), zero, batch["dones"], cfg.gamma, 1.0)
    return torch.where(state.count == 0, monte_carlo, bootstrapped)


class A2CTerms(NamedTuple):
    """The two terms of the A2C loss of one task (scalars).

    Attributes:
        policy: ``-mean(sg(A) log pi(a|s))``.
        value: ``mean(A_v^2)``.
    """

    policy: Tensor
    value: Tensor


def a2c_terms(
    model: nn.Module, params: Params, batch: Batch, state: pa.PopArtState | None, cfg: A2CConfig = DEFAULT_A2C,
    *, value_units: str = "normalized",
) -> A2CTerms:
    r"""The policy and value terms of the A2C loss on one task's trajectories.

    .. math::
        P = -\operatorname{mean}(\operatorname{sg}(A) \log\pi(a|s)), \qquad V = \operatorname{mean}(A_v^2)

    (``P`` is the surrogate; ``cfg.estimator`` selects DiCE or LVC instead, see :mod:`metaopt.estimators`).

    ``G`` are the lambda-returns (:func:`lambda_returns`) with detached bootstrap values. Without PopArt
    ``A = A_v = G - V(s)``. With PopArt (``V(s) = \sigma n(s) + \mu``) the value error is scale-free and
    ``value_units`` says how it depends on the statistics:

    * ``"normalized"``: :math:`A_v = (G - \mu)/\sigma - n(s)` (PopArt's loss; the inner loop's choice);
    * ``"sg_scale"``: :math:`A_v = (G - V(s)) / \operatorname{sg}(\sigma)` -- the same value, but no gradient
      through the scale: an outer loss of this form cannot be lowered by inflating :math:`\sigma` (which the
      normalized form rewards: :math:`\partial A_v^2/\partial\sigma < 0`).

    The policy uses ``A = (G - V)/sigma`` if ``popart_advantages`` else ``G - V``.

    Args:
        model: The :class:`ActorCritic` (its structure; values come from ``params``).
        params: Parameters by name.
        batch: One task's trajectories (:data:`Batch`).
        state: PopArt statistics, or ``None`` for no PopArt.
        cfg: Loss settings.
        value_units: ``"normalized"`` or ``"sg_scale"`` (PopArt only).

    Returns:
        :class:`A2CTerms` ``(policy, value)``.
    """
    check_choice("value_units", value_units, VALUE_UNITS)
    logp, n, n_last = _forward(model, params, batch)
    assert logp is not None
    if state is None:
        values, last = n, n_last
    else:
        values, last = pa.unnormalize(state, n), pa.unnormalize(state, n_last)
    returns = lambda_returns(batch["rewards"], values.detach(), last.detach(), batch["dones"], cfg.gamma, cfg.lam)
    if state is None:
        adv_value = returns - values
    elif value_units == "sg_scale":
        adv_value = (returns - values) / state.sigma.detach()
    else:
        adv_value = pa.normalize(state, returns) - n
    # PopArt-IMPALA's policy step: advantages (and so every estimator's rewards and baselines) divided by sigma.
    scale = state.sigma.detach() if state is not None and cfg.popart_advantages else None
    if cfg.estimator == "surrogate":
        adv = (returns - values).detach()
        policy = -((adv if scale is None else adv / scale) * logp).mean()
    else:
        r, v, v_last = batch["rewards"], values.detach(), last.detach()
        if scale is not None:
            r, v, v_last = r / scale, v / scale, v_last / scale
        policy = estimators.policy_loss(cfg.estimator, logp, r, batch["dones"], v, gamma=cfg.gamma,
                                        lam=1.0 if cfg.estimator == "dice" else cfg.lam, last_values=v_last)
    return A2CTerms(policy, (adv_value**2).mean())


def a2c_loss(
    model: nn.Module, params: Params, batch: Batch, state: pa.PopArtState | None, cfg: A2CConfig = DEFAULT_A2C
) -> Tensor:
    r"""A2C loss on one task's trajectories: :math:`c_\pi P + c_v V` of :func:`a2c_terms` (normalized units).

    Args:
        model: The :class:`ActorCritic` (its structure; values come from ``params``).
        params: Parameters by name.
        batch: One task's trajectories (:data:`Batch`).
        state: PopArt statistics, or ``None`` for no PopArt.
        cfg: Loss settings.

    Returns:
        Scalar loss.
    """
    terms = a2c_terms(model, params, batch, state, cfg)
    return cfg.policy_coef * terms.policy + cfg.value_coef * terms.value


def make_inner_loop(
    model: nn.Module,
    *,
    popart: bool,
    steps: int = 1,
    cfg: A2CConfig = DEFAULT_A2C,
    optimizer: InnerOptimizer | None = None,
    first_order: bool = False,
    truncate: int | None = None,
    debias: bool = False,
    first_pop: bool = True,
) -> InnerLoop:
    """The MAML-A2C inner loop; with ``popart``, ART runs on the lambda-returns and POP on ``value``.

    ``debias`` and ``first_pop`` are :class:`~metaopt.engines.PopArtSpec`'s options.
    """

    def loss(params: Params, batch: Batch, state: pa.PopArtState | None) -> Tensor:
        return a2c_loss(model, params, batch, state, cfg)

    spec = None
    if popart:
        spec = PopArtSpec(
            "value.weight", "value.bias", targets=lambda p, b, s: returns_targets(model, p, b, s, cfg),
            debias=debias, first_pop=first_pop,
        )
    return InnerLoop(
        loss, steps=steps, optimizer=optimizer or sgd(), first_order=first_order, truncate=truncate, popart=spec,
    )
