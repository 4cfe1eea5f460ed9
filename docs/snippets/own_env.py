"""Your own environment and model: a batched env + a Gaussian actor-critic, trained by MetaLearner and by hand."""

from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

import metaopt
from metaopt import popart, rl
from metaopt.envs import Trajectories
from metaopt.maml import MAMLConfig, MetaLearner, routed_meta_gradient


class LineTasks(NamedTuple):
    """Tasks: tensors indexed by task on dim 0 (a run splits them across processes by slicing)."""

    goals: torch.Tensor  # [N]
    scales: torch.Tensor  # [N] reward multipliers (optional field: used for normalized metrics)


class LineNoise(NamedTuple):
    """Every random number of a rollout, drawn up front (common random numbers)."""

    action_z: torch.Tensor  # [N, B, T, 1] standard normals for a Gaussian policy


class Line1D:
    """A point on a line: start at 0, move by the action clipped to +-0.2, reward -c |x' - g|."""

    observation_size, action_size, discrete = 1, 1, False

    def __init__(self, horizon: int = 10) -> None:
        self.horizon = horizon

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator) -> LineTasks:
        """Goals g ~ U(-1, 1), scales c = 10^U(-2, 2)."""
        goals = torch.rand(num_tasks, generator=generator) * 2 - 1
        return LineTasks(goals, 10.0 ** (4 * torch.rand(num_tasks, generator=generator) - 2))

    def draw_noise(self, num_tasks: int, num_trajectories: int, *, generator: torch.Generator) -> LineNoise:
        """Standard normals for the Gaussian policy, [N, B, T, 1]."""
        return LineNoise(torch.randn(num_tasks, num_trajectories, self.horizon, 1, generator=generator))

    def rollout(self, tasks: LineTasks, act, noise: LineNoise) -> Trajectories:
        """All tasks and episodes at once; act(obs [N, B, 1], noise [N, B, 1]) -> actions [N, B, 1]."""
        n, b, t_max = noise.action_z.shape[:3]
        x, obs, actions, rewards = torch.zeros(n, b, 1), [], [], []
        for t in range(t_max):
            a = act(x, noise.action_z[:, :, t])  # the policy turns the step's noise into an action
            obs.append(x)
            actions.append(a)
            x = x + a.clamp(-0.2, 0.2)
            rewards.append(-tasks.scales[:, None] * (x[..., 0] - tasks.goals[:, None]).abs())
        dones = torch.zeros(t_max, n, b)
        dones[-1] = 1.0
        return Trajectories(torch.stack(obs), torch.stack(actions), torch.stack(rewards), dones, None, x,
                            tasks.scales)


class Agent(nn.Module):
    """A Gaussian actor-critic: state-dependent mean, learned log-std, a value head named critic."""

    distribution = rl.DIAG_GAUSSIAN  # the policy output is [mean, log_std]

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, hidden), nn.Tanh())
        self.mean = nn.Linear(hidden, 1)
        self.log_std = nn.Parameter(torch.full((1,), -0.5))
        self.critic = nn.Linear(hidden, 1)  # the value head: PopArt rescales critic.weight/critic.bias

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(policy output [..., 2], normalized value [...])."""
        h = self.body(obs)
        mean = self.mean(h)
        return torch.cat([mean, self.log_std.expand_as(mean)], -1), self.critic(h).squeeze(-1)


cfg = MAMLConfig(tasks=8, trajectories=10, iterations=3, horizon=10, popart=True, learn=("lr", "beta"),
                 scaled=True, eval_tasks=4)
learner = MetaLearner(cfg, env=Line1D(), model=Agent(), value_head="critic")
for _ in range(cfg.iterations):
    metrics = learner.step()  # any engine: MAMLConfig(engine="torchopt" | "higher")
print({k: round(metrics[k], 4) for k in ("outer_loss", "train_post_return_norm", "lr", "beta")})


env, model = learner.env, learner.model
loss_cfg = rl.A2CConfig()
inner = rl.make_inner_loop(model, popart=True, steps=cfg.num_inner_steps, cfg=loss_cfg, value_head="critic")


def rollout(tasks, params, noise):
    """Roll out theta_0 (params=None) or each task's adapted weights (no grad)."""

    def act(obs, eps):
        out = model(obs)[0] if params is None else torch.func.vmap(
            lambda p, o: functional_call(model, p, (o,))[0])(params, obs)
        return model.distribution.sample(out, eps)

    with torch.no_grad():
        return env.rollout(tasks, act, noise)


def meta_gradient(tasks, noise_inner, noise_post, meta):
    """Adapt every task (PopArt, K steps), roll out, and route the outer terms' gradients."""
    n = len(tasks.goals)

    def batch(k, params):  # fresh episodes for every inner step
        return rl.task_major(rollout(tasks, None if k == 0 else params, noise_inner[k]))

    res = metaopt.adapt_tasks(model, inner, metaopt.per_step(batch), meta, engine="func",
                              popart_state=popart.init_tasks(n), num_tasks=n)
    post = rl.task_major(rollout(tasks, res.params, noise_post))
    terms = metaopt.map_tasks(lambda p, s, b: rl.outer_a2c_terms(model, p, b, popart.PopArtState(*s), loss_cfg),
                              res.params, tuple(res.popart_state), post)
    objectives = {"policy": terms[:, 0].sum(), "value": loss_cfg.value_coef * terms[:, 1].sum()}
    objectives["total"] = objectives["policy"] + objectives["value"]
    g_theta, g_meta = routed_meta_gradient(objectives, list(model.parameters()), meta)  # lr, beta: policy terms
    return g_theta + g_meta

# The hand-written loop computes MetaLearner's meta-gradient on the same tasks and noise.
data = learner.sample_iteration()
by_hand = meta_gradient(data.tasks, data.noise_inner, data.noise_post, learner.meta)
by_learner = learner.meta_gradient(data).grads
assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(by_hand, by_learner, strict=True))
print(f"hand-written loop == MetaLearner.meta_gradient on {len(by_hand)} tensors")
