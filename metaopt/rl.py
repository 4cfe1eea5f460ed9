"""Actor-critic agent, lambda-returns and the A2C loss, with optional PopArt value normalization.

Everything is functional in the parameters (``params`` dicts used with
:func:`torch.func.functional_call`) so the same loss runs as a MAML inner or outer loss on any engine and
under ``torch.func.vmap`` over tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metaopt import estimators
from metaopt import popart as pa
from metaopt._validation import check_bool, check_choice, check_real
from metaopt.engines import InnerLoop, PopArtSpec
from metaopt.envs import Trajectories
from metaopt.envs.batched import inverse_cdf
from metaopt.inner_optim import InnerOptimizer, sgd

__all__ = [
    "PolicyDistribution",
    "Categorical",
    "DiagGaussian",
    "CATEGORICAL",
    "DIAG_GAUSSIAN",
    "distribution_of",
    "ActorCritic",
    "GaussianActorCritic",
    "ACTIVATIONS",
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
    "outer_a2c_terms",
    "make_inner_loop",
    "PolicyHealth",
    "policy_health",
]

Params = dict[str, Tensor]
#: One task's trajectories (time-major inside a task): observations [T, B, S], actions/rewards/dones [T, B],
#: last_observations [B, S]. Stacked over tasks on dim 0 for ``vmap``.
Batch = dict[str, Tensor]


class PolicyDistribution(Protocol):
    """How a model's policy output parameterizes a distribution over actions.

    ``out`` is the policy output of the model (its first return value) for a batch of observations; the
    common random number ``noise`` of one step is drawn up front by the environment (:mod:`metaopt.envs`), so
    that :meth:`sample` is a deterministic function of ``(out, noise)``.
    """

    #: ``"discrete"`` (integer actions) or ``"continuous"`` (real vectors).
    kind: str

    def log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        """``log pi(a|s)`` of ``actions`` under the distribution ``out`` parameterizes (differentiable in ``out``)."""
        ...

    def sample(self, out: Tensor, noise: Tensor) -> Tensor:
        """The action that the step's common random number ``noise`` selects."""
        ...


class Categorical:
    r"""Categorical policy over ``A`` actions from logits ``out [..., A]``.

    .. math::
        \log\pi(a|s) = \text{out}_a - \log\textstyle\sum_j e^{\text{out}_j}, \qquad
        a = \min\big(\#\{k : F_k < u\},\ A - 1\big),\ F_k = \textstyle\sum_{j\le k}\pi(j|s),\ u\sim U(0,1),

    the inverse-CDF rule of :class:`metaopt.envs.BatchedTabularMDP` (same actions from the same uniforms).
    """

    kind = "discrete"

    def log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        """Log-softmax of ``out`` at the integer ``actions [...]``."""
        if actions.is_floating_point():
            raise TypeError(f"actions of a Categorical policy must be integer indices, got dtype {actions.dtype} "
                            "(a continuous action space needs DiagGaussian)")
        return F.log_softmax(out, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def sample(self, out: Tensor, noise: Tensor) -> Tensor:
        """Inverse-CDF sample with uniforms ``noise [...]``."""
        return inverse_cdf(torch.softmax(out.to(noise.dtype), dim=-1).cumsum(dim=-1).contiguous(), noise)


class DiagGaussian:
    r"""Diagonal Gaussian policy over ``D``-dimensional actions from ``out = [mean, log_std]`` (``[..., 2D]``).

    .. math::
        \log\pi(a|s) = -\sum_{d=1}^D \Big(\tfrac12\big(\tfrac{a_d - m_d(s)}{\sigma_d}\big)^2 + \log\sigma_d
        + \tfrac12\log 2\pi\Big), \qquad a = m(s) + \sigma\odot z,\ z\sim\mathcal N(0, I),

    with :math:`\sigma = e^{\text{log\_std}}`. The environment may clip the action it applies (2D navigation
    clips to the box); the log-probability is that of the sampled action, as in MAML's 2D navigation.
    """

    kind = "continuous"

    def log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        """Summed over the ``D`` action dimensions: ``[...]`` from ``out [..., 2D]`` and ``actions [..., D]``."""
        mean, log_std = _split_gaussian(out, actions)
        z = (actions - mean) * torch.exp(-log_std)
        return -(0.5 * z**2 + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, out: Tensor, noise: Tensor) -> Tensor:
        """``mean + exp(log_std) * noise`` with standard normals ``noise [..., D]``."""
        mean, log_std = _split_gaussian(out, noise)
        return mean + torch.exp(log_std) * noise


def _split_gaussian(out: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    d = like.shape[-1] if like.dim() else 0
    if out.shape[-1] != 2 * d:
        raise ValueError(f"a DiagGaussian policy output must be [..., 2D] = [mean, log_std] for D={d} action "
                         f"dimensions (the actions' last dim), got policy output shape {tuple(out.shape)} and actions "
                         f"{tuple(like.shape)}")
    mean, log_std = out.chunk(2, dim=-1)
    return mean, log_std


#: The shared categorical distribution (stateless): a model's ``distribution`` for discrete actions.
CATEGORICAL = Categorical()
#: The shared diagonal Gaussian distribution (stateless): a model's ``distribution`` for continuous actions.
DIAG_GAUSSIAN = DiagGaussian()


def distribution_of(model: nn.Module) -> PolicyDistribution:
    """The model's policy distribution: its ``distribution`` attribute, :data:`CATEGORICAL` if it has none."""
    dist = getattr(model, "distribution", CATEGORICAL)
    if not (callable(getattr(dist, "log_prob", None)) and callable(getattr(dist, "sample", None))):
        raise TypeError(f"model.distribution must be a PolicyDistribution (log_prob and sample, e.g. "
                        f"metaopt.rl.DIAG_GAUSSIAN), got {dist!r}")
    return cast(PolicyDistribution, dist)


#: Hidden activations of :class:`ActorCritic` (``relu`` is TorchOpt's; the others have no dead zone).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU,
                                           "leaky_relu": nn.LeakyReLU}


class ActorCritic(nn.Module):
    """Body ``Linear(S, H)-act-Linear(H, H)-act``, a categorical policy head and a value head.

    The value head outputs *normalized* values ``n(s)`` when PopArt is used (unnormalized
    ``V(s) = sigma n(s) + mu``); without PopArt, ``n(s)`` is the value itself.

    Args:
        num_states: Observation size (one-hot states).
        num_actions: Number of discrete actions.
        hidden: Hidden width.
        activation: Hidden activation, a key of :data:`ACTIVATIONS`.
        device: Device of the parameters (default: torch's default device).
        dtype: Floating dtype of the parameters.
    """

    def __init__(self, num_states: int = 10, num_actions: int = 5, hidden: int = 32, *, activation: str = "relu",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_choice("activation", activation, tuple(ACTIVATIONS))
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(nn.Linear(num_states, hidden, **kw), act(), nn.Linear(hidden, hidden, **kw), act())
        self.policy = nn.Linear(hidden, num_actions, **kw)
        self.value = nn.Linear(hidden, 1, **kw)

    distribution: PolicyDistribution = CATEGORICAL

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits [..., A], value [...])`` for observations ``[..., S]``."""
        h = self.body(obs)
        return self.policy(h), self.value(h).squeeze(-1)


class GaussianActorCritic(nn.Module):
    """Body ``Linear(O, H)-act-Linear(H, H)-act``, a diagonal Gaussian policy and a value head.

    The policy's mean is state dependent (``mean = Linear(H, D)(h)``), its log standard deviation a learned
    parameter ``log_std [D]`` shared by all states; the policy output is ``[mean, log_std]`` (``[..., 2D]``, see
    :class:`DiagGaussian`). The value head ``value`` is as in :class:`ActorCritic` (normalized with PopArt).

    Args:
        obs_size: Observation size.
        action_size: Action dimensions ``D``.
        hidden: Hidden width.
        activation: Hidden activation, a key of :data:`ACTIVATIONS`.
        init_log_std: Initial ``log_std``.
        device: Device of the parameters.
        dtype: Floating dtype of the parameters.
    """

    distribution: PolicyDistribution = DIAG_GAUSSIAN

    def __init__(self, obs_size: int = 2, action_size: int = 2, hidden: int = 64, *, activation: str = "tanh",
                 init_log_std: float = 0.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_choice("activation", activation, tuple(ACTIVATIONS))
        check_real("init_log_std", init_log_std)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        act = ACTIVATIONS[activation]
        self.body = nn.Sequential(nn.Linear(obs_size, hidden, **kw), act(), nn.Linear(hidden, hidden, **kw), act())
        self.mean = nn.Linear(hidden, action_size, **kw)
        self.log_std = nn.Parameter(torch.full((action_size,), float(init_log_std), **kw))
        self.value = nn.Linear(hidden, 1, **kw)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``([mean, log_std] [..., 2D], value [...])`` for observations ``[..., O]``."""
        h = self.body(obs)
        mean = self.mean(h)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1), self.value(h).squeeze(-1)


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
        if traj.states is None:
            raise ValueError("states=True needs trajectories with tabular states (traj.states), got states=None: "
                             "this environment has no discrete states (use states=False)")
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

    The log-probability is that of the model's policy distribution (:func:`distribution_of`). With ``states`` in
    the batch (one-hot observations of tabular states, categorical policies) the network and the log-softmax run
    once per state and the visits are selected by a product with the one-hot observations, which is exact (every
    other term is a zero): the same values as a forward pass per visit, with ``S`` rows instead of ``T * B``.
    """
    obs, last = batch["observations"], batch["last_observations"]
    if "states" in batch:
        logits, n = state_table(model, params, obs.shape[-1], obs)
        values, last_values = obs @ n, last @ n
        if values_only:
            return None, values, last_values
        logp = (obs @ F.log_softmax(logits, dim=-1)).gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        return logp, values, last_values
    out, n = functional_call(model, params, (obs,))
    _, n_last = functional_call(model, params, (last,))
    if values_only:
        return None, n, n_last
    return distribution_of(model).log_prob(out, batch["actions"]), n, n_last


def returns_targets(
    model: nn.Module, params: Params, batch: Batch, state: pa.PopArtState | None, cfg: A2CConfig
) -> Tensor:
    r"""ART's targets: lambda-returns of ``batch`` bootstrapped from the unnormalized values of ``params``.

    The bootstrap is :math:`\sigma\,\operatorname{sg}(n(s)) + \mu`: the network's output is a constant (no
    gradient into the fast weights), while the statistics ``state`` keep their dependence on ``beta`` and on earlier
    targets, so a meta-gradient reaches ``beta`` through every ART step, not only the latest one.

    Statistics that have never been updated (``state.count == 0``: fresh per-task statistics) do not yet give the
    value head's output any unit, so their first targets are the Monte-Carlo returns (``lambda = 1``, no
    bootstrap): otherwise ``mu = 0, sigma = 1`` would read the initial head's raw output as a return and, for a
    task with small rewards, the bootstrap would dominate the first scale estimate.
    """
    with torch.no_grad():  # record no graph for the network's part of the bootstrap
        _, n, n_last = _forward(model, params, batch, values_only=True)
    n, n_last = n.detach(), n_last.detach()  # sg(n) for forward-mode AD too (no_grad stops only backward mode)
    if state is None:
        return lambda_returns(batch["rewards"], n, n_last, batch["dones"], cfg.gamma, cfg.lam)
    v, v_last = pa.unnormalize(state, n), pa.unnormalize(state, n_last)
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
    *, value_units: str = "normalized", statistics_gradient: bool = False,
) -> A2CTerms:
    r"""The policy and value terms of the A2C loss on one task's trajectories.

    .. math::
        P = -\operatorname{mean}(\operatorname{sg}(A) \log\pi(a|s)), \qquad V = \operatorname{mean}(A_v^2)

    (``P`` is the surrogate; ``cfg.estimator`` selects DiCE or LVC instead, see :mod:`metaopt.estimators`).

    ``G`` are the lambda-returns (:func:`lambda_returns`) bootstrapped from values the fast weights do not move.
    Without PopArt ``A = A_v = G - V(s)``. With PopArt (``V(s) = \sigma n(s) + \mu``) the value error is
    scale-free and ``value_units`` says how it depends on the statistics:

    * ``"normalized"``: :math:`A_v = (G - \mu)/\sigma - n(s)` (PopArt's loss; the inner loop's choice);
    * ``"sg_scale"``: :math:`A_v = (G - V(s)) / \operatorname{sg}(\sigma)` -- the same value, but no gradient
      through the scale: an outer loss of this form cannot be lowered by inflating :math:`\sigma` (which the
      normalized form rewards: :math:`\partial A_v^2/\partial\sigma < 0`).

    The policy uses ``A = (G - V)/sigma`` if ``popart_advantages`` else ``G - V``.

    ``statistics_gradient`` says what the stop-gradients cut. Off (the outer terms' choice): the advantage, the
    bootstrap values and the policy's ``1/sigma`` are constants, so the terms depend on the statistics only through
    the value error. On (the inner loss's choice, :func:`a2c_loss`): only the network's output is stopped, as PopArt's
    Algorithm 1 asks -- the bootstrap is :math:`\sigma\,\operatorname{sg}(n) + \mu` and the policy's normalized
    advantage :math:`(G - \mu)/\sigma - \operatorname{sg}(n)` -- so the gradient with respect to ``params`` has the
    same value, while the statistics (and through them ``beta`` and the targets) stay differentiable: the inner
    step's direction depends on ``beta``, which is what gives a learned ``beta`` its meta-gradient.

    Args:
        model: The :class:`ActorCritic` (its structure; values come from ``params``).
        params: Parameters by name.
        batch: One task's trajectories (:data:`Batch`).
        state: PopArt statistics, or ``None`` for no PopArt.
        cfg: Loss settings.
        value_units: ``"normalized"`` or ``"sg_scale"`` (PopArt only).
        statistics_gradient: Keep the dependence on ``state`` of the advantage, the bootstrap values and the
            policy's scale (PopArt only; see above).

    Returns:
        :class:`A2CTerms` ``(policy, value)``.
    """
    check_choice("value_units", value_units, VALUE_UNITS)
    check_bool("statistics_gradient", statistics_gradient)
    logp, n, n_last = _forward(model, params, batch)
    assert logp is not None
    if state is None:
        values, fixed, fixed_last = n, n.detach(), n_last.detach()
    else:
        values = pa.unnormalize(state, n)
        stats = state if statistics_gradient else state.detach()
        fixed, fixed_last = pa.unnormalize(stats, n.detach()), pa.unnormalize(stats, n_last.detach())
    returns = lambda_returns(batch["rewards"], fixed, fixed_last, batch["dones"], cfg.gamma, cfg.lam)
    if state is None:
        adv_value = returns - values
    elif value_units == "sg_scale":
        adv_value = (returns - values) / state.sigma.detach()
    else:
        adv_value = pa.normalize(state, returns) - n
    # PopArt-IMPALA's policy step: advantages (and so every estimator's rewards and baselines) divided by sigma.
    scale = None
    if state is not None and cfg.popart_advantages:
        scale = state.sigma if statistics_gradient else state.sigma.detach()
    if cfg.estimator == "surrogate":
        adv = returns - fixed
        policy = -((adv if scale is None else adv / scale) * logp).mean()
    else:
        r, v, v_last = batch["rewards"], fixed, fixed_last
        if scale is not None:
            r, v, v_last = r / scale, v / scale, v_last / scale
        policy = estimators.policy_loss(cfg.estimator, logp, r, batch["dones"], v, gamma=cfg.gamma,
                                        lam=1.0 if cfg.estimator == "dice" else cfg.lam, last_values=v_last)
    return A2CTerms(policy, (adv_value**2).mean())


def a2c_loss(
    model: nn.Module, params: Params, batch: Batch, state: pa.PopArtState | None, cfg: A2CConfig = DEFAULT_A2C
) -> Tensor:
    r"""A2C loss on one task's trajectories: :math:`c_\pi P + c_v V` of :func:`a2c_terms` (normalized units).

    This is the inner loop's loss: only the network's output is stopped in the advantage and the bootstrap
    (``statistics_gradient=True`` of :func:`a2c_terms`), so its gradient with respect to ``params`` is PopArt's and
    depends differentiably on the statistics.

    Args:
        model: The :class:`ActorCritic` (its structure; values come from ``params``).
        params: Parameters by name.
        batch: One task's trajectories (:data:`Batch`).
        state: PopArt statistics, or ``None`` for no PopArt.
        cfg: Loss settings.

    Returns:
        Scalar loss.
    """
    terms = a2c_terms(model, params, batch, state, cfg, statistics_gradient=True)
    return cfg.policy_coef * terms.policy + cfg.value_coef * terms.value


def outer_a2c_terms(model: nn.Module, params: Params, batch: Batch, state: pa.PopArtState | None,
                    cfg: A2CConfig = DEFAULT_A2C, *, value_units: str = "sg_scale") -> Tensor:
    r"""The outer (post-adaptation) terms of one task, stacked ``[policy, value]``: the job's meta-objective.

    :func:`a2c_terms` with the outer loss's stop-gradients (``statistics_gradient=False``: the advantage is a
    constant) and, with PopArt, the value error in ``value_units`` (default ``"sg_scale"``,
    :math:`(G - V)/\operatorname{sg}(\sigma)`, which inflating :math:`\sigma` cannot lower). Map it over tasks with
    :func:`metaopt.engines.map_tasks` and weight the rows with ``cfg.policy_coef`` and ``cfg.value_coef``.
    """
    return torch.stack(a2c_terms(model, params, batch, state, cfg, value_units=value_units))


def make_inner_loop(
    model: nn.Module,
    *,
    popart: bool,
    steps: int = 1,
    cfg: A2CConfig = DEFAULT_A2C,
    optimizer: InnerOptimizer | None = None,
    first_order: bool = False,
    truncate: int | None = None,
    debias: bool = True,
    first_pop: bool = False,
    value_head: str = "value",
) -> InnerLoop:
    """The MAML-A2C inner loop; with ``popart``, ART runs on the lambda-returns and POP on the value head.

    ``debias`` and ``first_pop`` are :class:`~metaopt.engines.PopArtSpec`'s options (defaults: the recommended
    configuration). ``value_head`` names the model's value layer: its parameters ``{value_head}.weight`` (one row)
    and ``{value_head}.bias`` are what POP rescales.
    """
    if not isinstance(value_head, str) or not value_head:
        raise TypeError(f"value_head must be the name of the model's value layer (a non-empty str, e.g. 'value'), "
                        f"got {value_head!r}")

    def loss(params: Params, batch: Batch, state: pa.PopArtState | None) -> Tensor:
        return a2c_loss(model, params, batch, state, cfg)

    spec = None
    if popart:
        spec = PopArtSpec(
            f"{value_head}.weight", f"{value_head}.bias",
            targets=lambda p, b, s: returns_targets(model, p, b, s, cfg),
            debias=debias, first_pop=first_pop,
        )
    return InnerLoop(
        loss, steps=steps, optimizer=optimizer or sgd(), first_order=first_order, truncate=truncate, popart=spec,
    )


class PolicyHealth(NamedTuple):
    """Whether a network's policy still depends on its input (see :func:`policy_health`).

    Attributes:
        live_units: Per hidden activation layer of the model, the fraction of its units whose output varies over the
            observations (a ReLU unit that is 0 on every input is dead: no gradient reaches its weights).
        logit_spread: Mean over actions of the standard deviation over observations of the log-probabilities
            (a :class:`DiagGaussian` policy: of the means); 0 when the policy is the same in every state.
    """

    live_units: tuple[float, ...]
    logit_spread: float


def policy_health(model: nn.Module, params: Params, observations: Tensor) -> PolicyHealth:
    r"""Live hidden units and the policy's dependence on the observation, measured on ``observations``.

    .. math::
        \text{live}_\ell = \frac{1}{H_\ell}\sum_j \mathbb{1}\big[\max_s h_{\ell j}(s) - \min_s h_{\ell j}(s)
        > 10^{-6}\big], \qquad
        \text{spread} = \frac{1}{A}\sum_a \operatorname{std}_s \log\pi(a|s)

    The activations are read at the outputs of every module of ``model`` that is one of :data:`ACTIVATIONS`
    (none: an empty tuple). Both are diagnostics (no gradient).

    Args:
        model: The actor-critic (its first output must be the policy's logits).
        params: Parameters by name.
        observations: ``[S, obs]`` inputs, e.g. every one-hot state of a TabularMDP.

    Returns:
        :class:`PolicyHealth`.
    """
    acts: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out.detach()))
             for m in model.modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
    try:
        with torch.no_grad():
            logits = functional_call(model, params, (observations,))[0]
    finally:
        for h in hooks:
            h.remove()
    flat = [a.reshape(-1, a.shape[-1]) for a in acts]
    live = tuple(float((a.amax(0) - a.amin(0) > 1e-6).to(torch.float64).mean()) for a in flat)
    if isinstance(distribution_of(model), DiagGaussian):
        per_obs = logits.reshape(-1, logits.shape[-1])[:, : logits.shape[-1] // 2]  # the means
    else:
        per_obs = F.log_softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    spread = float(per_obs.std(0, correction=0).mean()) if per_obs.shape[0] > 1 else 0.0
    return PolicyHealth(live, spread)
