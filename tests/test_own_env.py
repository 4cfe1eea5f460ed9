"""Policies beyond categorical, the batched env protocol (TabularMDP, PointNav2D, a user's own), MetaLearner."""

from __future__ import annotations

import copy
import json
import math
from typing import NamedTuple

import gymnasium
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt import rl
from metaopt.engines import PopArtSpec, adapt_tasks
from metaopt.envs import (
    POINTNAV_ENV_ID,
    SCALED_POINTNAV_ENV_ID,
    BatchedTabularMDP,
    PointNav2D,
    TabularMDPFamily,
    Trajectories,
    check_env,
    sample_tasks,
)
from metaopt.inner_optim import sgd
from metaopt.maml import MAMLConfig, MetaLearner, routed_meta_gradient
from metaopt.meta_params import MetaParameters
from metaopt.verify import check_gradients

F64 = torch.float64


# ------------------------------------------------------------------------------------------- distributions
def test_diag_gaussian_log_prob_matches_torch_normal_and_sample_is_the_reparameterization():
    gen = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(4, 3, 2, generator=gen, dtype=F64), torch.randn(2, generator=gen, dtype=F64)
    out = torch.cat([mean, log_std.expand_as(mean)], -1)
    a = torch.randn(4, 3, 2, generator=gen, dtype=F64)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    assert torch.allclose(rl.DIAG_GAUSSIAN.log_prob(out, a), ref, atol=1e-12)
    z = torch.randn(4, 3, 2, generator=gen, dtype=F64)
    x = rl.DIAG_GAUSSIAN.sample(out, z)
    # log N(m + s z; m, s) = -|z|^2/2 - sum log s - D/2 log 2 pi
    expected = -0.5 * (z**2).sum(-1) - log_std.sum() - math.log(2 * math.pi)
    assert torch.allclose(rl.DIAG_GAUSSIAN.log_prob(out, x), expected, atol=1e-12)


def test_categorical_log_prob_matches_torch_and_sampling_matches_the_tabular_simulator():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=gen, dtype=F64)
    a = torch.randint(0, 4, (5,), generator=gen)
    ref = torch.distributions.Categorical(logits=logits).log_prob(a)
    assert torch.allclose(rl.CATEGORICAL.log_prob(logits, a), ref, atol=1e-12)
    with pytest.raises(TypeError, match="integer indices"):
        rl.CATEGORICAL.log_prob(logits, a.double())
    # the same actions from the same uniforms as the simulator's own inverse-CDF rule
    sim = BatchedTabularMDP(sample_tasks(3, seed=0), 6, dtype=F64)
    table = torch.randn(3, 10, 5, generator=gen, dtype=F64)
    noise = sim.draw_noise(7, generator=gen)
    by_table = sim.rollout_table(table, noise)
    idx = torch.arange(3)[:, None]
    by_act = sim.rollout_act(lambda obs, u: rl.CATEGORICAL.sample(table[idx, obs.argmax(-1)], u), noise)
    assert torch.equal(by_table.actions, by_act.actions) and torch.equal(by_table.rewards, by_act.rewards)


def test_gaussian_a2c_policy_gradient_in_log_std_is_the_analytic_score():
    # d/d log_std_d of log N(a; m, s) = z_d^2 - 1 with z = (a - m)/s, so the surrogate's gradient in log_std is
    # -mean(A (z^2 - 1)); the advantage A does not depend on log_std (value head and body are other parameters).
    torch.manual_seed(0)
    model = rl.GaussianActorCritic(2, 2, 8, init_log_std=-0.3).double()
    env = PointNav2D(horizon=6, dtype=F64)
    gen = torch.Generator().manual_seed(2)
    tasks = env.sample_tasks(1, generator=gen)
    traj = env.rollout(tasks, lambda o, z: rl.DIAG_GAUSSIAN.sample(model(o)[0], z), env.draw_noise(1, 5, generator=gen))
    batch = {k: v[0] for k, v in rl.task_major(traj).items()}
    params = dict(model.named_parameters())
    cfg = rl.A2CConfig(gamma=0.9, lam=0.8)
    terms = rl.a2c_terms(model, params, batch, None, cfg)
    (g,) = torch.autograd.grad(terms.policy, [params["log_std"]])
    with torch.no_grad():
        out, v = model(batch["observations"])
        _, v_last = model(batch["last_observations"])
        mean = out[..., :2]
        z = (batch["actions"] - mean) / params["log_std"].exp()
        adv = rl.lambda_returns(batch["rewards"], v, v_last, batch["dones"], 0.9, 0.8) - v
        expected = -(adv[..., None] * (z**2 - 1)).mean(dim=(0, 1))
    assert torch.allclose(g, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator", ["surrogate", "dice", "lvc"])
def test_every_estimator_takes_gaussian_log_probs(estimator):
    torch.manual_seed(0)
    model = rl.GaussianActorCritic(2, 2, 8).double()
    env = PointNav2D(horizon=5, dtype=F64)
    gen = torch.Generator().manual_seed(3)
    traj = env.rollout(env.sample_tasks(1, generator=gen), lambda o, z: rl.DIAG_GAUSSIAN.sample(model(o)[0], z),
                       env.draw_noise(1, 4, generator=gen))
    batch = {k: v[0] for k, v in rl.task_major(traj).items()}
    params = dict(model.named_parameters())
    terms = rl.a2c_terms(model, params, batch, None, rl.A2CConfig(estimator=estimator))
    grads = torch.autograd.grad(terms.policy, [params["mean.weight"], params["log_std"]])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------------ PointNav
def test_pointnav_dynamics_match_the_gymnasium_env_step_by_step():
    env = PointNav2D(horizon=12, scale_range=(-2.0, 3.0), dtype=F64)
    gen = torch.Generator().manual_seed(4)
    tasks, noise = env.sample_tasks(2, generator=gen), env.draw_noise(2, 3, generator=gen)
    assert torch.all(tasks.goals.abs() <= 0.5) and torch.all((tasks.scales >= 1e-2) & (tasks.scales <= 1e3))
    traj = env.rollout(tasks, lambda obs, z: 0.15 * z, noise)  # actions beyond the clip box, sometimes
    assert traj.states is None and torch.all(traj.observations[0] == 0) and traj.dones[-1].eq(1).all()
    assert (traj.actions.abs() > 0.1).any()  # recorded as sampled, clipped only when applied
    for i in range(2):
        gym_env = gymnasium.make(SCALED_POINTNAV_ENV_ID, horizon=12).unwrapped
        gym_env.reset(seed=0, options={"goal": tasks.goals[i].numpy(), "scale": float(tasks.scales[i])})
        for t in range(12):
            x, r, _, truncated, _ = gym_env.step(traj.actions[t, i, 0].numpy())
            assert math.isclose(r, float(traj.rewards[t, i, 0]), rel_tol=1e-12, abs_tol=1e-12)
        assert np.allclose(x, traj.last_observations[i, 0].numpy(), atol=1e-12) and truncated
    assert gymnasium.spec(POINTNAV_ENV_ID).max_episode_steps == 100


def test_pointnav_noise_is_per_task_so_a_shard_rolls_out_the_same():
    env = PointNav2D(horizon=7, dtype=F64)
    gen = torch.Generator().manual_seed(5)
    tasks, noise = env.sample_tasks(4, generator=gen), env.draw_noise(4, 3, generator=gen)
    full = env.rollout(tasks, lambda o, z: o + 0.05 * z, noise)
    part = env.rollout(tasks.shard(1, 3), lambda o, z: o + 0.05 * z, noise.shard(1, 3))
    assert torch.equal(full.rewards[:, 1:3], part.rewards)


# -------------------------------------------------------------------------------------------- MetaLearner
def tiny_nav(**kw):
    base = dict(env="pointnav2d", tasks=3, trajectories=4, iterations=2, horizon=8, hidden=8, popart=True,
                learn=("lr", "beta"), scaled=True, dtype="float64", eval_tasks=2)
    return MAMLConfig(**(base | kw))


def test_pointnav_defaults_and_engines_agree_on_the_meta_gradient():
    assert MAMLConfig(env="pointnav2d").validate().horizon == 100 and MAMLConfig().validate().horizon == 10
    grads = {}
    for engine in ("func", "torchopt", "higher"):
        learner = MetaLearner(tiny_nav(engine=engine))
        assert isinstance(learner.model, rl.GaussianActorCritic)
        grads[engine] = learner.meta_gradient(learner.sample_iteration()).grads
    for engine in ("torchopt", "higher"):
        for a, b in zip(grads["func"], grads[engine], strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), engine
    assert grads["func"][-1].abs() > 0 and grads["func"][-2].abs() > 0  # lr and beta get meta-gradients


def test_pointnav_meta_gradient_matches_finite_differences_on_fixed_batches():
    # With no policy term and gamma ~ 0 the loss is a true function of the meta-parameters (see test_maml), once the
    # episodes are fixed: a Gaussian policy's rollouts move smoothly with the weights (a = m + s z), which finite
    # differences would see and the (no-grad) rollouts do not give autograd.
    cfg = tiny_nav(gamma=1e-12, outer_value="normalized", inner_steps=2)
    learner = MetaLearner(cfg)
    learner.loss_cfg = rl.A2CConfig(cfg.gamma, cfg.lam, cfg.value_coef, True, policy_coef=0.0)
    learner.inner = rl.make_inner_loop(learner.model, popart=True, steps=2, cfg=learner.loss_cfg)
    data = learner.sample_iteration()
    inputs = {"log_lr": learner.meta.log_lr, "logit_beta": learner.meta.logit_beta}
    moving = check_gradients(lambda: learner.meta_loss(data)[0], inputs, eps=1e-5, rtol=1e-5)
    assert not moving.passed  # the rollouts' own dependence on the weights
    with learner.fixed_rollouts():
        report = check_gradients(lambda: learner.meta_loss(data)[0], inputs, eps=1e-5, rtol=1e-5)
    assert report.passed, report.table()


def test_pointnav_resume_is_bit_identical():
    a = MetaLearner(tiny_nav())
    a.step()
    state = copy.deepcopy(a.state_dict())  # state_dict holds references to the live tensors
    a.step()
    b = MetaLearner(tiny_nav())
    b.load_state_dict(state)
    b.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_cli_trains_pointnav(tmp_path):
    from metaopt.cli import main

    out = tmp_path / "run"
    args = ["maml-rl", "--env", "pointnav2d", "--scaled", "--popart", "--learn", "lr,beta", "--iterations", "2",
            "--tasks", "2", "--trajectories", "3", "--horizon", "6", "--hidden", "8", "--eval-tasks", "2",
            "--eval-every", "1", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["env"] == "pointnav2d" and len(metrics["train"]) == 2
    assert all(math.isfinite(r["train_post_return_norm"]) for r in metrics["train"])
    assert main([*args[:8], "4", *args[9:], "--resume"]) == 0  # --iterations 4, resumed
    assert [r["iteration"] for r in json.loads((out / "metrics.json").read_text())["train"]] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------ a user's own env/model
class WalkTasks(NamedTuple):
    targets: torch.Tensor  # [N]


class WalkNoise(NamedTuple):
    u: torch.Tensor  # [N, B, T] uniforms


class RandomWalk:
    """A discrete env the package does not ship: steps -1/0/+1 on a line, reward -|x - target|."""

    observation_size, action_size, discrete, horizon = 1, 3, True, 5

    def sample_tasks(self, num_tasks, *, generator):
        return WalkTasks(torch.randint(-3, 4, (num_tasks,), generator=generator).to(F64))

    def draw_noise(self, num_tasks, num_trajectories, *, generator):
        return WalkNoise(torch.rand(num_tasks, num_trajectories, self.horizon, generator=generator, dtype=F64))

    def rollout(self, tasks, act, noise):
        n, b, t_max = noise.u.shape
        x, obs, acts, rews = torch.zeros(n, b, 1, dtype=F64), [], [], []
        for t in range(t_max):
            a = act(x, noise.u[:, :, t])
            obs.append(x)
            acts.append(a)
            x = x + (a - 1).to(F64)[..., None]
            rews.append(-(x[..., 0] - tasks.targets[:, None]).abs())
        dones = torch.zeros(t_max, n, b, dtype=F64)
        dones[-1] = 1
        return Trajectories(torch.stack(obs), torch.stack(acts), torch.stack(rews), dones, None, x,
                            torch.ones(n, dtype=F64))


class Critic(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 8), nn.Tanh())
        self.logits = nn.Linear(8, 3)
        self.critic = nn.Linear(8, 1)

    def forward(self, obs):
        h = self.body(obs)
        return self.logits(h), self.critic(h).squeeze(-1)


def test_a_users_own_env_and_model_train_through_the_protocol():
    assert check_env(RandomWalk()) is not None
    cfg = MAMLConfig(tasks=4, trajectories=6, iterations=3, popart=True, learn=("lr", "beta"), dtype="float64",
                     eval_tasks=2, horizon=5)
    grads = {}
    for engine in ("func", "torchopt"):
        cfg.engine = engine
        torch.manual_seed(0)
        learner = MetaLearner(cfg, env=RandomWalk(), model=Critic().double(), value_head="critic")
        before = [p.detach().clone() for p in learner.parameters()]
        grads[engine] = learner.meta_gradient(learner.sample_iteration()).grads
        learner.generator.manual_seed(cfg.seed)
        for _ in range(cfg.iterations):
            m = learner.step()
        assert math.isfinite(m["outer_loss"]) and learner.iteration == 3
        assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters(), strict=True))
        assert set(learner.evaluate()) == {"test_pre_return", "test_post_return"}
    for a, b in zip(grads["func"], grads["torchopt"], strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_model_and_env_mismatches_name_the_argument():
    cfg = MAMLConfig(tasks=2, trajectories=2, popart=True, horizon=5)
    with pytest.raises(TypeError, match=r"model parameters must have the run's dtype torch.float32.*expected model.to"):
        MetaLearner(cfg, env=RandomWalk(), model=Critic().double(), value_head="critic")
    with pytest.raises(ValueError, match=r"value_head='value' must name the model's value layer"):
        MetaLearner(cfg, env=RandomWalk(), model=Critic())
    with pytest.raises(ValueError, match=r"model.distribution=DiagGaussian .* expected Categorical"):
        MetaLearner(cfg, env=RandomWalk(), model=rl.GaussianActorCritic(1, 3))
    with pytest.raises(TypeError, match=r"env.rollout must be a method"):
        MetaLearner(cfg, env=type("NoRollout", (), {"observation_size": 1, "action_size": 2, "discrete": True,
                                                    "horizon": 3, "sample_tasks": len, "draw_noise": len})())


# ------------------------------------------------------------------------------------------ defaults and errors
def test_popart_defaults_are_the_recommended_configuration():
    spec = PopArtSpec("w", "b", targets=lambda p, b, s: b)
    assert spec.debias and not spec.first_pop
    model = rl.ActorCritic()
    inner = rl.make_inner_loop(model, popart=True)
    assert inner.popart is not None and inner.popart.debias and not inner.popart.first_pop
    cfg = MAMLConfig()
    assert cfg.debias and not cfg.first_pop


def test_init_tasks_and_the_per_task_shape_error():
    s = pa.init_tasks(3, dtype=F64)
    assert all(t.shape == (3, 1) for t in s) and torch.equal(s.sigma, torch.ones(3, 1, dtype=F64))
    s.mu[0, 0] = 5.0  # each task's row is its own memory
    assert s.mu[1, 0] == 0
    model = nn.Sequential(nn.Linear(2, 1)).double()
    inner_spec = PopArtSpec("0.weight", "0.bias", targets=lambda p, b, st: b[1])
    from metaopt.engines import InnerLoop

    inner = InnerLoop(lambda p, b, st: ((functional_call(model, p, (b[0],)).squeeze(-1) - b[1]) ** 2).mean(),
                      optimizer=sgd(), popart=inner_spec)
    batches = (torch.randn(3, 4, 2, dtype=F64), torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"popart_state must hold per-task statistics.*init_tasks.*got mu \(3,\)"):
        adapt_tasks(model, inner, batches, MetaParameters(dtype=F64), popart_state=pa.init(3, dtype=F64))
    res = adapt_tasks(model, inner, batches, MetaParameters(dtype=F64), popart_state=pa.init_tasks(3, dtype=F64))
    assert res.popart_state.mu.shape == (3, 1)


def test_check_gradients_names_a_float32_input():
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match=r"inputs\['x'\] must be float64, got dtype torch.float32.*model.double"):
        check_gradients(lambda: (x**2).sum(), {"x": x})
    y = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.raises(TypeError, match=r"objective\(\) must return a float64 scalar"):
        check_gradients(lambda: (y**2).sum().float(), {"y": y})


def test_tabular_family_is_the_default_and_matches_the_old_sampling():
    learner = MetaLearner(MAMLConfig(tasks=2, trajectories=2, dtype="float64"))
    assert isinstance(learner.env, TabularMDPFamily) and isinstance(learner.model, rl.ActorCritic)
    t = learner.sample_tasks(2, seed=9)
    ref = sample_tasks(2, num_states=10, num_actions=5, generator=torch.Generator().manual_seed(9))
    assert all(torch.equal(a, b) for a, b in zip(t, ref, strict=True))


def test_routed_meta_gradient_follows_each_objective():
    theta = torch.tensor(2.0, dtype=F64, requires_grad=True)
    meta = MetaParameters(lr=0.5, beta=0.3, learn=("lr", "beta"), dtype=F64)
    lr, beta = meta.lr, meta.beta
    policy, value = theta * lr, theta**2 * beta
    g_theta, (g_lr, g_beta) = routed_meta_gradient({"policy": policy, "value": value, "total": policy + value},
                                                   [theta], meta, lr_objective="policy", beta_objective="value")
    assert math.isclose(float(g_theta[0]), 0.5 + 2 * 2.0 * 0.3, rel_tol=1e-12)
    assert torch.isclose(g_lr, torch.tensor(2.0 * 0.5, dtype=F64))  # d(theta e^{log lr})/d log lr
    assert torch.isclose(g_beta, torch.tensor(4.0 * 0.3 * 0.7, dtype=F64))  # d(theta^2 sigmoid)/d logit


def _toy_popart(outputs=1):
    from metaopt.engines import InnerLoop

    model = nn.Linear(2, outputs).double()
    spec = PopArtSpec("weight", "bias", targets=lambda p, b, st: b[1])
    inner = InnerLoop(lambda p, b, st: ((pa.normalize(st, b[1]) - functional_call(model, p, (b[0],)).squeeze(-1)) ** 2
                                        ).mean(), optimizer=sgd(), popart=spec)
    return model, inner


def test_a_two_output_head_and_a_dtype_mismatch_name_the_spec_and_the_dtypes():
    model, inner = _toy_popart(outputs=2)
    batches = (torch.randn(3, 4, 2, dtype=F64), torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"popart.weight='weight' \(PopArtSpec\).*one row per PopArt statistic \(1"):
        adapt_tasks(model, inner, batches, MetaParameters(dtype=F64), popart_state=pa.init_tasks(3, dtype=F64))
    model, inner = _toy_popart()
    with pytest.raises(TypeError, match=r"meta \(MetaParameters\) has dtype torch.float32 but the model's parameters "
                                        r"torch.float64"):
        adapt_tasks(model, inner, batches, MetaParameters(), popart_state=pa.init_tasks(3, dtype=F64))


@pytest.mark.parametrize("engine", ["func", "torchopt"])
def test_a_nan_reward_is_reported_at_the_step_that_saw_it(engine):
    from metaopt.engines import NonFiniteTaskError

    model, inner = _toy_popart()
    x, y = torch.randn(3, 4, 2, dtype=F64), torch.randn(3, 4, dtype=F64)
    y[1, 2] = float("nan")
    with pytest.raises(NonFiniteTaskError) as err:
        adapt_tasks(model, inner, (x, y), MetaParameters(dtype=F64), popart_state=pa.init_tasks(3, dtype=F64),
                    engine=engine)
    assert err.value.tasks == [1]
    msg = str(err.value)
    assert ("task 1: non-finite loss[0], popart_state.mu" in msg and "check the first batch" in msg
            if engine == "func"
            else "task 1: inner step 0:" in msg and "targets" in msg), msg


def test_pointnav_distributed_over_two_processes_matches_one(tmp_path):
    from metaopt.cli import main

    args = ["maml-rl", "--env", "pointnav2d", "--scaled", "--popart", "--learn", "lr,beta", "--iterations", "2",
            "--tasks", "4", "--trajectories", "3", "--horizon", "6", "--hidden", "8", "--eval-tasks", "2",
            "--eval-every", "0", "--dtype", "float64", "--no-plot"]
    runs = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        assert main([*args, *extra, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())["train"]
    for a, b in zip(runs["one"], runs["two"], strict=True):
        for key in ("outer_loss", "lr", "beta", "train_post_return_norm"):
            assert math.isclose(a[key], b[key], rel_tol=1e-9), key
