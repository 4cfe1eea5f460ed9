"""TorchOpt-style reference implementations of the MAML-A2C meta-iteration, and their checks against metaopt.

All three follow TorchOpt's ``examples/MAML-RL/maml.py`` (REFERENCE.md section 3): ``torchopt.MetaSGD(policy,
lr=0.1)``; ``extract_state_dict`` of the policy and the inner optimizer; then task by task a rollout with the
current policy, ``inner_opt.step(inner_loss)``, a rollout with the adapted policy, ``outer_loss.backward()``
(meta-gradients summed over tasks in ``.grad``), ``recover_state_dict`` of both; finally one outer Adam step.
The A2C loss is the example's (bootstrap values from a forward pass on every next observation, lambda-returns
in numpy, ``torch.distributions.Categorical`` log-probabilities). They differ in how episodes are played:

* :class:`TorchOptAsWritten` (row ``torchopt-as-written``) -- the example as users run it: one Gymnasium env
  made with ``gymnasium.make("metaopt/TabularMDP-v0")`` (wrappers included), the episodes one after the other,
  one policy forward and ``pi.sample()`` per time step, the env's own numpy RNG for transitions and rewards.
  Its random numbers are its own, so its meta-gradient is checked statistically (:func:`compare_as_written`).
* :class:`TorchOptCRN` with ``rollout="sequential"`` (row ``torchopt-sequential-crn``) -- the same stepping,
  driven by metaopt's common random numbers: actions by the inverse CDF of ``softmax(logits)`` at
  ``noise.action_u`` and :meth:`~metaopt.envs.TabularMDPEnv.step_with_noise` (the rule of
  :class:`~metaopt.envs.BatchedTabularMDP`), so its trajectories and meta-gradient equal metaopt's
  (:func:`check_identical_math`).
* :class:`TorchOptCRN` with ``rollout="vector"`` (row ``baseline``, the reference of the ratios) -- ``B`` envs
  stepped in a Python loop at every time step with one batched policy forward (a synchronous vector env without
  its info bookkeeping), same common random numbers.

All use metaopt's :class:`~metaopt.rl.ActorCritic` (REFERENCE.md's architecture), so parameters and gradients
line up one to one with metaopt's.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from metaopt._validation import check_int
from metaopt.envs import ENV_ID, TabularMDPEnv, draw_noise
from metaopt.maml import PER_TASK, IterationData, MAMLConfig, MetaLearner
from metaopt.rl import ActorCritic

__all__ = [
    "Traj",
    "CategoricalMLPPolicy",
    "a2c_loss",
    "TorchOptLoop",
    "TorchOptCRN",
    "TorchOptAsWritten",
    "check_identical_math",
    "compare_as_written",
]


class Traj(NamedTuple):
    """One task's rollout in TorchOpt's layout (time-major numpy arrays).

    Attributes:
        obs: ``[T, B, S]`` observations.
        acs: ``[T, B]`` actions.
        next_obs: ``[T, B, S]`` observations after each step.
        rews: ``[T, B]`` rewards.
        gammas: ``[T, B]`` ``gamma * (1 - done)``.
    """

    obs: np.ndarray
    acs: np.ndarray
    next_obs: np.ndarray
    rews: np.ndarray
    gammas: np.ndarray


class CategoricalMLPPolicy(nn.Module):
    """TorchOpt's policy interface around an :class:`ActorCritic`: ``forward`` returns ``(Categorical, values)``.

    Args:
        net: The actor-critic (held, not copied); ``parameters()`` are its parameters, in its order.
    """

    def __init__(self, net: ActorCritic) -> None:
        super().__init__()
        self.net = net

    def forward(self, obs: Tensor) -> tuple[Categorical, Tensor]:
        """``(Categorical(logits=...), values [...])`` for observations ``[..., S]``."""
        logits, values = self.net(obs)
        return Categorical(logits=logits), values


def a2c_loss(traj: Traj, policy: CategoricalMLPPolicy, *, lam: float, value_coef: float,
             dtype: torch.dtype) -> Tensor:
    r"""TorchOpt's A2C loss.

    :math:`L = -\operatorname{mean}(\operatorname{sg}(A) \log\pi(a|s)) + c_v \operatorname{mean}(A^2)`,
    ``A = G - V(s)``, with lambda-returns
    :math:`G_i = r_i + \gamma_i ((1 - \lambda) V(s_{i+1}) + \lambda G_{i+1})` computed in numpy from detached
    values of a forward pass on the next observations (:math:`G_T = V(s_T)`).

    Args:
        traj: One task's rollout.
        policy: The policy (``forward`` returns ``(Categorical, values)``).
        lam: Lambda.
        value_coef: Weight of the value loss.
        dtype: Dtype of the policy's parameters.
    """
    _, next_values = policy(torch.from_numpy(traj.next_obs).to(dtype))
    next_values = next_values.detach().numpy()
    returns = []
    g = next_values[-1]
    for i in reversed(range(next_values.shape[0])):
        g = traj.rews[i] + traj.gammas[i] * ((1.0 - lam) * next_values[i] + lam * g)
        returns.insert(0, g)
    lambda_returns = torch.from_numpy(np.array(returns))
    pi, values = policy(torch.from_numpy(traj.obs).to(dtype))
    log_probs = pi.log_prob(torch.from_numpy(traj.acs))
    advs = lambda_returns - values
    return -(advs.detach() * log_probs).mean() + value_coef * advs.pow(2).mean()


class TorchOptLoop:
    """TorchOpt's meta-iteration (module docstring); subclasses say how a task's episodes are played.

    Args:
        model: The initial policy ``theta_0`` (copied).
        cfg: The configuration; only TorchOpt's setting is supported (one inner SGD step without momentum, no
            PopArt, nothing learned besides ``theta_0``).

    Raises:
        ValueError: ``cfg`` asks for something TorchOpt's example does not do (names the fields).
        ImportError: ``torchopt`` is not installed.
    """

    def __init__(self, model: ActorCritic, cfg: MAMLConfig) -> None:
        cfg.validate()
        unsupported = {
            "inner_steps": (cfg.num_inner_steps, 1), "inner_optimizer": (cfg.inner_optimizer, "sgd"),
            "inner_momentum": (cfg.inner_momentum, 0.0), "popart": (cfg.popart, False), "learn": (cfg.learn, ()),
            "first_order": (cfg.first_order, False), "truncate": (cfg.truncate, None), "scaled": (cfg.scaled, False),
        }
        bad = {k: v for k, (v, want) in unsupported.items() if v != want}
        if bad:
            want = {k: w for k, (_, w) in unsupported.items() if k in bad}
            raise ValueError(f"the TorchOpt baselines support TorchOpt's reference setting only: got {bad}, "
                             f"expected {want}")
        import torchopt

        self.torchopt = torchopt
        self.cfg = cfg
        self.dtype = cfg.torch_dtype
        self.np_dtype = np.float64 if cfg.dtype == "float64" else np.float32
        self.policy = CategoricalMLPPolicy(copy.deepcopy(model))
        self.inner_opt = torchopt.MetaSGD(self.policy, lr=cfg.inner_lr)
        self.outer_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.outer_lr)

    def _buffers(self) -> Traj:
        c = self.cfg
        shape = (c.horizon, c.trajectories)
        return Traj(
            obs=np.zeros((*shape, c.num_states), dtype=np.float32),
            acs=np.zeros(shape, dtype=np.int64),
            next_obs=np.zeros((*shape, c.num_states), dtype=np.float32),
            rews=np.zeros(shape, dtype=self.np_dtype),
            gammas=np.zeros(shape, dtype=self.np_dtype),
        )

    def sample_traj(self, data: Any, i: int, phase: str) -> Traj:
        """Play the ``B`` episodes of task ``i`` of ``data`` with the current policy (``phase``: pre or post)."""
        raise NotImplementedError

    def a2c_loss(self, traj: Traj) -> Tensor:
        """:func:`a2c_loss` with this run's settings."""
        return a2c_loss(traj, self.policy, lam=self.cfg.lam, value_coef=self.cfg.value_coef, dtype=self.dtype)

    def meta_gradient(self, data: Any) -> dict[str, np.ndarray]:
        """Accumulate the meta-gradient of the summed outer losses into the policy's ``.grad``.

        Args:
            data: The iteration's :class:`~metaopt.maml.IterationData` (its ``tasks``; the common random
                numbers too where the subclass uses them).

        Returns:
            Per-task ``pre_return``, ``post_return`` (mean episode return) and ``outer_loss``.
        """
        to = self.torchopt
        policy_state = to.extract_state_dict(self.policy)
        optim_state = to.extract_state_dict(self.inner_opt)
        pre_r, post_r, losses = [], [], []
        for i in range(data.tasks.num_tasks):
            pre = self.sample_traj(data, i, "pre")
            inner_loss = self.a2c_loss(pre)
            self.inner_opt.step(inner_loss)
            post = self.sample_traj(data, i, "post")
            outer_loss = self.a2c_loss(post)
            outer_loss.backward()
            to.recover_state_dict(self.policy, policy_state)
            to.recover_state_dict(self.inner_opt, optim_state)
            pre_r.append(np.sum(pre.rews, axis=0).mean())
            post_r.append(np.sum(post.rews, axis=0).mean())
            losses.append(float(outer_loss.detach()))
        return {"pre_return": np.array(pre_r), "post_return": np.array(post_r), "outer_loss": np.array(losses)}

    def step(self, data: Any) -> dict[str, np.ndarray]:
        """One meta-iteration: zero grads, :meth:`meta_gradient`, outer Adam step."""
        self.outer_opt.zero_grad()
        info = self.meta_gradient(data)
        self.outer_opt.step()
        return info

    def gradients(self) -> list[Tensor]:
        """The accumulated meta-gradient, one tensor per parameter (in ``ActorCritic.parameters()`` order)."""
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.policy.parameters()]


class TorchOptCRN(TorchOptLoop):
    """The TorchOpt loop on metaopt's common random numbers (rows ``baseline`` and ``torchopt-sequential-crn``).

    Step ``t`` of episode ``b`` of task ``i`` takes its action by the inverse CDF of ``softmax(logits)`` at
    ``noise.action_u[i, b, t]`` and steps the env with
    ``step_with_noise(a, noise.transition_u[i, b, t], noise.reward_z[i, b, t])``, where ``noise`` is the
    iteration's ``noise_pre`` or ``noise_post``: the trajectories equal :class:`~metaopt.envs.BatchedTabularMDP`'s.

    Args:
        model: The initial policy (copied).
        cfg: The configuration (TorchOpt's setting only).
        rollout: ``"vector"`` (``B`` envs, one batched forward per time step; the task is set on them once per
            task) or ``"sequential"`` (TorchOpt's: one env whose task is set at every rollout, the episodes one
            after the other, one forward per environment step).
    """

    def __init__(self, model: ActorCritic, cfg: MAMLConfig, *, rollout: str = "vector") -> None:
        if rollout not in ("vector", "sequential"):
            raise ValueError(f"rollout must be 'vector' or 'sequential', got {rollout!r}")
        super().__init__(model, cfg)
        self.rollout = rollout
        n_envs = cfg.trajectories if rollout == "vector" else 1
        self.envs = [TabularMDPEnv(cfg.num_states, cfg.num_actions, cfg.episode_length) for _ in range(n_envs)]
        self._task_data: Any = None  # the iteration data and task index last set on the vector envs
        self._task_index = -1

    def _action(self, obs: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Actions for observations ``[..., S]`` by the inverse CDF of the policy at uniforms ``u [...]``."""
        logits, _ = self.policy.net(torch.from_numpy(obs).to(self.dtype))
        cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
        u_t = torch.as_tensor(np.ascontiguousarray(u), dtype=self.dtype).reshape(*cdf.shape[:-1], 1)
        return torch.searchsorted(cdf, u_t).squeeze(-1).clamp_(max=self.cfg.num_actions - 1).numpy()

    def sample_traj(self, data: Any, i: int, phase: str) -> Traj:
        """Play task ``i``'s episodes on the iteration's ``noise_pre``/``noise_post`` (no grad)."""
        noise = data.noise_pre if phase == "pre" else data.noise_post
        task = data.tasks.task(i)
        action_u, transition_u, reward_z = (x[i].numpy() for x in (noise.action_u, noise.transition_u,
                                                                   noise.reward_z))
        buf = self._buffers()
        gamma, horizon = self.cfg.gamma, self.cfg.episode_length
        with torch.no_grad():
            if self.rollout == "vector":
                if self._task_data is not data or self._task_index != i:  # once per task, like envs.call("reset_task")
                    for env in self.envs:
                        env.reset_task(task)
                    self._task_data, self._task_index = data, i
                obs = np.stack([env.reset()[0] for env in self.envs])
                for t in range(horizon):
                    acs = self._action(obs, action_u[:, t])
                    nxt = np.empty_like(obs)
                    for b, env in enumerate(self.envs):
                        ob, rew, term, trunc, _ = env.step_with_noise(int(acs[b]), transition_u[b, t], reward_z[b, t])
                        nxt[b] = ob
                        buf.rews[t, b] = rew
                        buf.gammas[t, b] = (1.0 - float(term or trunc)) * gamma
                    buf.obs[t], buf.acs[t], buf.next_obs[t] = obs, acs, nxt
                    obs = nxt
            else:
                env = self.envs[0]
                env.reset_task(task)
                for b in range(self.cfg.trajectories):
                    ob, _ = env.reset()
                    for t in range(horizon):
                        ac = int(self._action(ob, action_u[b, t]))
                        nxt, rew, term, trunc, _ = env.step_with_noise(ac, transition_u[b, t], reward_z[b, t])
                        buf.obs[t, b], buf.acs[t, b], buf.next_obs[t, b] = ob, ac, nxt
                        buf.rews[t, b] = rew
                        buf.gammas[t, b] = (1.0 - float(term or trunc)) * gamma
                        ob = nxt
        return buf


class TorchOptAsWritten(TorchOptLoop):
    """TorchOpt's ``maml.py`` as users run it (row ``torchopt-as-written``).

    One env from ``gymnasium.make(ENV_ID, ..., max_episode_steps=T)`` (with Gymnasium's wrappers), seeded once
    with ``reset(seed=seed)``; per rollout ``env.unwrapped.reset_task(task)``, then the ``B`` episodes one after
    the other, each step ``pi, _ = policy(obs)``, ``pi.sample()`` (the global torch RNG) and ``env.step(ac)``
    (the env's numpy RNG). Tasks come from the iteration data (so every method meets the same tasks, and task
    sampling stays outside the timing, as for the other methods); its random numbers are not used.
    Differences from the example: Gymnasium's five-tuple ``step`` (``done = terminated or truncated``) and the
    float64 option.

    Args:
        model: The initial policy (copied).
        cfg: The configuration (TorchOpt's setting only).
        seed: Seed of the env's RNG (default ``cfg.seed``); the actions use the global torch RNG.
    """

    def __init__(self, model: ActorCritic, cfg: MAMLConfig, *, seed: int | None = None) -> None:
        super().__init__(model, cfg)
        self.env = gymnasium.make(ENV_ID, num_states=cfg.num_states, num_actions=cfg.num_actions,
                                  horizon=cfg.episode_length, max_episode_steps=cfg.episode_length)
        self.env.reset(seed=cfg.seed if seed is None else seed)

    def sample_traj(self, data: Any, i: int, phase: str) -> Traj:
        """Play task ``i``'s episodes with ``pi.sample()`` and the env's own RNG (no grad)."""
        env, c = self.env, self.cfg
        env.unwrapped.reset_task(data.tasks.task(i))
        buf = self._buffers()
        with torch.no_grad():
            for batch in range(c.trajectories):
                ob, _ = env.reset()
                for step in range(c.horizon):
                    ob_tensor = torch.from_numpy(ob).to(self.dtype)
                    pi, _ = self.policy(ob_tensor)
                    ac = pi.sample().cpu().numpy()
                    next_ob, rew, terminated, truncated, _ = env.step(ac)
                    done = terminated or truncated
                    buf.obs[step][batch] = ob
                    buf.next_obs[step][batch] = next_ob
                    buf.acs[step][batch] = ac
                    buf.rews[step][batch] = rew
                    buf.gammas[step][batch] = (1 - done) * c.gamma
                    ob = next_ob
        return buf


# ------------------------------------------------------------------------------------------------ checks
def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _metaopt_gradient(learner: MetaLearner, data: Any) -> tuple[list[Tensor], dict[str, np.ndarray]]:
    """metaopt-func's meta-gradient of ``theta_0`` and per-task ``pre_return``, ``post_return``, ``outer_loss``."""
    loss, info = learner.meta_loss(data, engine="func")
    rows = {name: info[k].detach().double().numpy() for k, name in enumerate(PER_TASK)}
    per_task = {"pre_return": rows["pre_return"], "post_return": rows["post_return"],
                "outer_loss": rows["policy_loss"] + learner.cfg.value_coef * rows["value_loss"]}
    return list(torch.autograd.grad(loss, list(learner.model.parameters()))), per_task


def check_identical_math(cfg: MAMLConfig, *, rollout: str = "vector") -> dict[str, Any]:
    """Compare a :class:`TorchOptCRN`'s meta-gradient and trajectories with metaopt ``func``'s on one iteration.

    Args:
        cfg: The configuration (use ``dtype="float64"`` for the proof).
        rollout: The baseline's environment stepping.

    Returns:
        ``grad_rel_error`` (``||g_base - g_func|| / ||g_func||`` over all parameters),
        ``grad_max_rel_error_per_tensor``, the largest absolute differences of the per-task pre/post returns
        and outer losses, and ``trajectories_identical`` (all per-task returns equal to 1e-9 relative in float64,
        1e-4 in float32).
    """
    learner = MetaLearner(cfg)
    data = learner.sample_iteration()
    base = TorchOptCRN(learner.model, cfg, rollout=rollout)
    binfo = base.meta_gradient(data)
    g_func, info = _metaopt_gradient(learner, data)
    g_base = base.gradients()
    rel = float((_flat(g_base) - _flat(g_func)).norm() / _flat(g_func).norm())
    per_tensor = max(float((b - f).norm() / f.norm().clamp_min(1e-300)) for b, f in zip(g_base, g_func, strict=True))
    pre, post, outer = (float(np.max(np.abs(binfo[k] - info[k]))) for k in ("pre_return", "post_return", "outer_loss"))
    scale = float(np.max(np.abs(binfo["post_return"]))) + 1.0
    tol = 1e-9 if cfg.dtype == "float64" else 1e-4
    return {
        "dtype": cfg.dtype, "rollout": rollout, "tasks": cfg.tasks, "trajectories": cfg.trajectories,
        "grad_rel_error": rel, "grad_max_rel_error_per_tensor": per_tensor,
        "max_abs_diff_pre_return": pre, "max_abs_diff_post_return": post, "max_abs_diff_outer_loss": outer,
        "trajectories_identical": bool(max(pre, post) <= tol * scale),
    }


def compare_as_written(cfg: MAMLConfig, *, draws: int = 4, scale: float = 1.0) -> dict[str, Any]:
    """Compare :class:`TorchOptAsWritten`'s meta-gradient with metaopt ``func``'s statistically.

    Both estimate the same meta-gradient with independent random numbers: on the same tasks and ``theta_0``,
    ``draws`` as-written meta-gradients (env seeds and torch seeds ``cfg.seed + 1 + j``) are compared with
    ``draws`` metaopt meta-gradients on fresh common random numbers. If the implementations agree, the norms
    come from one distribution and the mean gradients point the same way up to noise.

    Args:
        cfg: The configuration.
        draws: Independent meta-gradients per side.
        scale: Multiplies the as-written gradients before comparing (1; other values show the check can fail).

    Returns:
        ``finite`` (all as-written gradients finite), ``same_shapes``, ``norm_ratio``
        (``mean ||g_as_written|| / mean ||g_metaopt||``), ``norm_ratio_per_tensor`` (the same per parameter
        tensor), ``norm_cv`` (the coefficient of variation of the metaopt norms: the noise level of a norm),
        ``cosine_of_means`` (between the two mean gradients), ``cosine_within_metaopt`` (between the means of
        the two halves of the metaopt draws: what noise alone gives), and the per-task mean returns of both.
    """
    check_int("draws", draws, low=2)
    learner = MetaLearner(cfg)
    data = learner.sample_iteration()
    tasks, c = data.tasks, cfg
    g_as, g_mo, ret_as, ret_mo = [], [], [], []
    finite, shapes = True, True
    rng_state = torch.get_rng_state()
    try:
        for j in range(draws):
            torch.manual_seed(cfg.seed + 1 + j)
            base = TorchOptAsWritten(learner.model, cfg, seed=cfg.seed + 1 + j)
            info = base.meta_gradient(data)
            g = [scale * t for t in base.gradients()]
            finite &= all(bool(torch.isfinite(t).all()) for t in g)
            shapes &= [t.shape for t in g] == [p.shape for p in learner.model.parameters()]
            g_as.append(g)
            ret_as.append(float(np.mean(info["post_return"])))
            gen = torch.Generator().manual_seed(cfg.seed + 1_000 + j)
            noise = [draw_noise(tasks.num_tasks, c.trajectories, c.horizon, generator=gen, dtype=c.torch_dtype)
                     for _ in range(2)]
            fresh = IterationData(tasks, (noise[0],), noise[1])
            g, info = _metaopt_gradient(learner, fresh)
            g_mo.append(g)
            ret_mo.append(float(np.mean(info["post_return"])))
    finally:
        torch.set_rng_state(rng_state)
    norms_as = np.array([float(_flat(g).norm()) for g in g_as])
    norms_mo = np.array([float(_flat(g).norm()) for g in g_mo])
    per_tensor = [float(np.mean([float(g[k].norm()) for g in g_as]) / np.mean([float(g[k].norm()) for g in g_mo]))
                  for k in range(len(g_mo[0]))]

    def mean(gs: list[list[Tensor]]) -> Tensor:
        return torch.stack([_flat(g) for g in gs]).mean(0)

    def cos(a: Tensor, b: Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))

    half = draws // 2
    return {
        "dtype": cfg.dtype, "tasks": cfg.tasks, "trajectories": cfg.trajectories, "draws": draws,
        "finite": bool(finite), "same_shapes": bool(shapes),
        "norm_ratio": float(norms_as.mean() / norms_mo.mean()),
        "norm_ratio_per_tensor": per_tensor,
        "norm_cv": float(norms_mo.std(ddof=1) / norms_mo.mean()),
        "cosine_of_means": cos(mean(g_as), mean(g_mo)),
        "cosine_within_metaopt": cos(mean(g_mo[:half]), mean(g_mo[half:])),
        "post_return_as_written": float(np.mean(ret_as)), "post_return_metaopt": float(np.mean(ret_mo)),
    }
