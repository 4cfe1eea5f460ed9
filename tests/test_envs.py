"""Tests for metaopt.envs: TabularMDP tasks, the Gymnasium env and the batched CRN simulator."""

from __future__ import annotations

import importlib
import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import metaopt.envs
from metaopt.envs import (
    DEFAULT_SCALE_RANGE,
    ENV_ID,
    SCALED_ENV_ID,
    BatchedTabularMDP,
    RolloutNoise,
    TabularMDPEnv,
    TabularMDPTask,
    TaskBatch,
    Trajectories,
    draw_noise,
    register_envs,
    sample_tasks,
)

S, A, T = 10, 5, 10


def table_policy(weights: torch.Tensor):
    """Per-task tabular policy: logits[n, b] = weights[n, state(n, b)] (exact for one-hot inputs)."""

    def policy_fn(obs: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nbs,nsa->nba", obs, weights.to(obs.dtype))

    return policy_fn


def uniform_policy(obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*obs.shape[:2], A, dtype=obs.dtype)


def np_inverse_cdf(probs: np.ndarray, u: float) -> int:
    """Independent reference of the sampling rule: number of CDF entries < u, clamped."""
    return min(int(np.sum(np.cumsum(probs) < u)), len(probs) - 1)


def transition_counts(traj: Trajectories, task: int, num_states: int, num_actions: int) -> torch.Tensor:
    """Counts[s, a, s'] of observed transitions of one task."""
    states = traj.states[:, task]  # [T, B]
    next_states = torch.cat([traj.states[1:, task], traj.last_observations[task].argmax(-1)[None]], dim=0)
    flat = (states * num_actions + traj.actions[:, task]) * num_states + next_states
    counts = torch.bincount(flat.reshape(-1), minlength=num_states * num_actions * num_states)
    return counts.reshape(num_states, num_actions, num_states).to(torch.float64)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson statistic summed over visited (s, a) pairs and its degrees of freedom."""
    n = counts.sum(-1, keepdim=True)
    visited = n.squeeze(-1) > 0
    expected = n * probs
    stat = ((counts - expected) ** 2 / expected)[visited].sum()
    df = int(visited.sum()) * (probs.shape[-1] - 1)
    return float(stat), df


def chi_square_bound(df: int) -> float:
    # Mean df, std sqrt(2 df); 6 standard deviations is a generous one-sided bound.
    return df + 6.0 * math.sqrt(2.0 * df)


# --------------------------------------------------------------------------------------------------------
# 1. Gymnasium env and batched simulator agree
# --------------------------------------------------------------------------------------------------------
def test_env_and_batched_simulator_give_identical_trajectories_from_same_noise():
    tasks = sample_tasks(3, seed=11, scale_range=(-1.0, 2.0))
    sim = BatchedTabularMDP(tasks, horizon=T, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    noise = sim.draw_noise(6, generator=gen)
    weights = torch.randn(3, S, A, generator=gen, dtype=torch.float64)
    traj = sim.rollout(table_policy(weights), noise)

    env = TabularMDPEnv(horizon=T)
    for i in range(3):
        env.reset_task(tasks.task(i))
        # The env's copy of the task equals the batch's.
        assert torch.equal(env.task.transitions, tasks.transitions[i])
        assert torch.equal(env.task.reward_means, tasks.reward_means[i])
        for b in range(6):
            obs, info = env.reset()
            assert info["scale"] == pytest.approx(float(tasks.scales[i]), rel=0, abs=0)
            for t in range(T):
                np.testing.assert_array_equal(obs, traj.observations[t, i, b].numpy())
                state = int(np.argmax(obs))
                # Action chosen by the simulator equals an independent numpy inverse-CDF of the policy.
                probs = np.exp(weights[i, state].numpy())
                probs /= probs.sum()
                action = np_inverse_cdf(probs, float(noise.action_u[i, b, t]))
                assert int(traj.actions[t, i, b]) == action
                obs, reward, terminated, truncated, info = env.step_with_noise(
                    action, float(noise.transition_u[i, b, t]), float(noise.reward_z[i, b, t])
                )
                assert reward == float(traj.rewards[t, i, b])
                assert not terminated
                assert truncated == bool(traj.dones[t, i, b] == 1.0)
            np.testing.assert_array_equal(obs, traj.last_observations[i, b].numpy())


def test_rollout_actions_matches_env_with_given_actions():
    tasks = sample_tasks(2, seed=3)
    sim = BatchedTabularMDP(tasks, dtype=torch.float64)
    gen = torch.Generator().manual_seed(9)
    noise = sim.draw_noise(5, generator=gen)
    actions = torch.randint(0, A, (2, 5, T), generator=gen)
    traj = sim.rollout_actions(actions, noise)
    assert torch.equal(traj.actions, actions.permute(2, 0, 1))
    env = TabularMDPEnv()
    for i in range(2):
        env.reset_task(tasks.task(i))
        for b in range(5):
            env.reset()
            for t in range(T):
                obs, reward, _, _, info = env.step_with_noise(
                    int(actions[i, b, t]), float(noise.transition_u[i, b, t]), float(noise.reward_z[i, b, t])
                )
                assert reward == float(traj.rewards[t, i, b])
                expected_next = traj.states[t + 1, i, b] if t + 1 < T else traj.last_observations[i, b].argmax()
                assert info["state"] == int(expected_next)


# --------------------------------------------------------------------------------------------------------
# 2. Statistics of sampled transitions and rewards
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 250.0])
def test_batched_transition_and_reward_statistics(scale):
    base = sample_tasks(2, seed=21)
    task = base.task(0)._replace(scale=scale)
    sim = BatchedTabularMDP(TaskBatch.from_tasks([task]), dtype=torch.float64)
    noise = sim.draw_noise(20_000, generator=torch.Generator().manual_seed(0))
    traj = sim.rollout(uniform_policy, noise)

    counts = transition_counts(traj, 0, S, A)
    stat, df = chi_square(counts, task.transitions)
    assert df >= 40 * (S - 1), "too few (s, a) pairs visited for a meaningful test"
    assert stat < chi_square_bound(df), (stat, df)
    # Power check: the same statistic rejects the transitions of a different task.
    wrong_stat, _ = chi_square(counts, base.transitions[1])
    assert wrong_stat > chi_square_bound(df)

    # Reward mean c * R[s, a] and std c per (s, a), tolerance 5 standard errors.
    s, a, r = traj.states.reshape(-1), traj.actions.reshape(-1), traj.rewards.reshape(-1)
    checked = 0
    for si in range(S):
        for ai in range(A):
            rs = r[(s == si) & (a == ai)]
            n = rs.numel()
            if n < 200:
                continue
            checked += 1
            se_mean = scale / math.sqrt(n)
            assert abs(float(rs.mean()) - scale * float(task.reward_means[si, ai])) < 5 * se_mean
            assert abs(float(rs.std()) / scale - 1.0) < 5 / math.sqrt(2 * n)
    assert checked >= 30


def test_gymnasium_env_transition_and_reward_statistics():
    env = TabularMDPEnv()
    env.reset(seed=123)
    task = env.sample_tasks(1).task(0)._replace(scale=3.0)
    env.reset_task(task)
    rng = np.random.default_rng(0)
    counts = torch.zeros(S, A, S, dtype=torch.float64)
    rewards: dict[tuple[int, int], list[float]] = {}
    for _ in range(1500):
        _, info = env.reset()
        state, done = info["state"], False
        while not done:
            action = int(rng.integers(A))
            _, reward, terminated, truncated, info = env.step(action)
            counts[state, action, info["state"]] += 1
            rewards.setdefault((state, action), []).append(reward)
            state, done = info["state"], terminated or truncated
    assert counts.sum() == 1500 * T
    stat, df = chi_square(counts, task.transitions)
    assert stat < chi_square_bound(df), (stat, df)
    other = sample_tasks(1, seed=99).transitions[0]
    assert chi_square(counts, other)[0] > chi_square_bound(df)

    checked = 0
    for (si, ai), rs in rewards.items():
        if len(rs) < 100:
            continue
        checked += 1
        rs_arr = np.asarray(rs)
        assert abs(rs_arr.mean() - 3.0 * float(task.reward_means[si, ai])) < 5 * 3.0 / math.sqrt(len(rs))
        assert abs(rs_arr.std(ddof=1) / 3.0 - 1.0) < 5 / math.sqrt(2 * len(rs))
    assert checked >= 15


# --------------------------------------------------------------------------------------------------------
# 3. Seeding
# --------------------------------------------------------------------------------------------------------
def test_seeded_tasks_and_rollouts_repeat_and_differ_across_seeds():
    a, b = sample_tasks(4, seed=7), sample_tasks(4, seed=7)
    c = sample_tasks(4, generator=torch.Generator().manual_seed(7))
    d = sample_tasks(4, seed=8)
    for x, y, z in zip(a, b, c, strict=True):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert not torch.equal(a.transitions, d.transitions)
    assert not torch.equal(a.reward_means, d.reward_means)

    sim = BatchedTabularMDP(a)
    n1 = sim.draw_noise(8, generator=torch.Generator().manual_seed(1))
    n2 = sim.draw_noise(8, generator=torch.Generator().manual_seed(1))
    n3 = sim.draw_noise(8, generator=torch.Generator().manual_seed(2))
    t1, t2, t3 = (sim.rollout(uniform_policy, n) for n in (n1, n2, n3))
    for x, y in zip(t1, t2, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(t1.rewards, t3.rewards)
    assert not torch.equal(t1.states, t3.states)


def test_env_seeded_reset_repeats_including_lazy_default_task():
    def run(seed):
        env = TabularMDPEnv()
        env.reset(seed=seed)
        out = []
        for _ in range(2):  # second reset(seed) must redraw the same default task and RNG stream
            env.reset(seed=seed)
            for t in range(T):
                _, r, _, _, info = env.step(t % A)
                out.append((r, info["state"]))
        return out, env.task

    (o1, task1), (o2, task2), (o3, task3) = run(5), run(5), run(6)
    assert o1 == o2
    assert o1[: len(o1) // 2] == o1[len(o1) // 2 :]
    assert torch.equal(task1.transitions, task2.transitions)
    assert o1 != o3
    assert not torch.equal(task1.transitions, task3.transitions)

    env = TabularMDPEnv()
    env.reset(seed=0)
    s1 = env.sample_tasks(3)
    env.reset(seed=0)
    s2 = env.sample_tasks(3)
    assert torch.equal(s1.transitions, s2.transitions)


# --------------------------------------------------------------------------------------------------------
# 4. All tasks at once == task by task (common random numbers)
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_at_once_equals_per_task_and_shards(dtype):
    n = 6
    tasks = sample_tasks(n, seed=2, scale_range=DEFAULT_SCALE_RANGE)
    sim = BatchedTabularMDP(tasks, dtype=dtype)
    gen = torch.Generator().manual_seed(4)
    noise = draw_noise(n, 16, T, generator=gen, dtype=dtype)
    weights = 2.0 * torch.randn(n, S, A, generator=gen, dtype=dtype)
    full = sim.rollout(table_policy(weights), noise)
    assert full.rewards.dtype == dtype and full.observations.dtype == dtype

    for i in range(n):
        single = BatchedTabularMDP(tasks.select(i), dtype=dtype).rollout(
            table_policy(weights[i : i + 1]), noise.select(i)
        )
        for name, x, y in zip(Trajectories._fields, full.select(i), single, strict=True):
            assert torch.equal(x, y), name
    for start, stop in [(0, 2), (2, 6)]:
        shard = sim.select(slice(start, stop)).rollout(table_policy(weights[start:stop]), noise.shard(start, stop))
        for x, y in zip(full.select(slice(start, stop)), shard, strict=True):
            assert torch.equal(x, y)
    # The check has power: another task's noise gives a different trajectory.
    other = BatchedTabularMDP(tasks.select(0), dtype=dtype).rollout(table_policy(weights[:1]), noise.select(1))
    assert not torch.equal(other.rewards, full.select(0).rewards)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 4),
    b=st.integers(1, 5),
    horizon=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_per_task_equivalence_property(n, b, horizon, seed):
    tasks = sample_tasks(n, num_states=4, num_actions=3, seed=seed)
    sim = BatchedTabularMDP(tasks, horizon=horizon)
    gen = torch.Generator().manual_seed(seed)
    noise = sim.draw_noise(b, generator=gen)
    actions = torch.randint(0, 3, (n, b, horizon), generator=gen)
    full = sim.rollout_actions(actions, noise)
    j = seed % n
    single = sim.select(j).rollout_actions(actions[j : j + 1], noise.select(j))
    for x, y in zip(full.select(j), single, strict=True):
        assert torch.equal(x, y)


def test_vmapped_per_task_network_policy():
    """The intended use: a per-task MLP applied with torch.func.vmap; all-at-once == per-task (CPU)."""
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    n = 4
    nets = [torch.nn.Sequential(torch.nn.Linear(S, 16), torch.nn.Tanh(), torch.nn.Linear(16, A)) for _ in range(n)]
    params, _ = stack_module_state(nets)

    def make_policy(p):
        return lambda obs: vmap(lambda q, o: functional_call(nets[0], q, (o,)))(p, obs)

    sim = BatchedTabularMDP(sample_tasks(n, seed=0))
    noise = sim.draw_noise(32, generator=torch.Generator().manual_seed(0))
    full = sim.rollout(make_policy(params), noise)
    assert not full.rewards.requires_grad
    for i in range(n):
        single = sim.select(i).rollout(make_policy({k: v[i : i + 1] for k, v in params.items()}), noise.select(i))
        for x, y in zip(full.select(i), single, strict=True):
            assert torch.equal(x, y)


def test_trajectory_structure():
    tasks = sample_tasks(3, seed=0)
    sim = BatchedTabularMDP(tasks, horizon=7)
    traj = sim.rollout(uniform_policy, sim.draw_noise(4, generator=torch.Generator().manual_seed(0)))
    assert traj.observations.shape == (7, 3, 4, S)
    assert traj.actions.shape == traj.rewards.shape == traj.dones.shape == traj.states.shape == (7, 3, 4)
    assert traj.actions.dtype == traj.states.dtype == torch.long
    assert traj.last_observations.shape == (3, 4, S) and traj.scales.shape == (3,)
    assert torch.all(traj.states[0] == 0)
    assert torch.equal(traj.observations.argmax(-1), traj.states)
    assert torch.all(traj.observations.sum(-1) == 1)
    assert torch.equal(traj.dones[:-1], torch.zeros(6, 3, 4)) and torch.equal(traj.dones[-1], torch.ones(3, 4))
    # Every observed transition has positive probability under the task.
    nxt = torch.cat([traj.states[1:], traj.last_observations.argmax(-1)[None]])
    task_idx = torch.arange(3)[None, :, None].expand_as(nxt)
    assert torch.all(tasks.transitions[task_idx, traj.states, traj.actions, nxt] > 0)
    # TaskBatch helpers.
    t1 = tasks.task(1)
    assert torch.equal(t1.transitions, tasks.shard(1, 2).transitions[0])
    assert torch.equal(tasks.select([2, 0]).reward_means, tasks.reward_means[[2, 0]])
    assert torch.allclose(tasks.transitions.sum(-1), torch.ones(3, S, A, dtype=torch.float64))
    assert torch.all(tasks.transitions > 0)


# --------------------------------------------------------------------------------------------------------
# 5. Scaled variant
# --------------------------------------------------------------------------------------------------------
def test_scaled_tasks_span_the_range_and_scale_rewards():
    lo, hi = DEFAULT_SCALE_RANGE
    scaled = sample_tasks(2000, seed=1, scale_range=(lo, hi))
    log_c = torch.log10(scaled.scales)
    assert torch.all(scaled.scales >= 10**lo) and torch.all(scaled.scales <= 10**hi)
    assert float(log_c.min()) < lo + 0.05 and float(log_c.max()) > hi - 0.05
    # log10(c) ~ U(lo, hi): mean (lo + hi) / 2, standard error (hi - lo) / sqrt(12 * 2000) ~ 0.032.
    assert abs(float(log_c.mean()) - (lo + hi) / 2) < 0.15
    unscaled = sample_tasks(2000, seed=1)
    assert torch.all(unscaled.scales == 1.0)
    # Scales are drawn last, so the MDPs themselves are the same.
    assert torch.equal(scaled.transitions, unscaled.transitions)
    constant = sample_tasks(3, seed=0, scale_range=(1.5, 1.5)).scales
    torch.testing.assert_close(constant, torch.full((3,), 10**1.5, dtype=torch.float64), rtol=1e-15, atol=0)

    few = scaled.shard(0, 5)
    gen = torch.Generator().manual_seed(0)
    noise = draw_noise(5, 32, T, generator=gen, dtype=torch.float64)
    a = BatchedTabularMDP(few, dtype=torch.float64).rollout(uniform_policy, noise)
    b = BatchedTabularMDP(unscaled.shard(0, 5), dtype=torch.float64).rollout(uniform_policy, noise)
    assert torch.equal(a.states, b.states)
    torch.testing.assert_close(a.rewards, few.scales[None, :, None] * b.rewards, rtol=1e-12, atol=0)
    assert not torch.allclose(a.rewards, b.rewards)


def test_scaled_gymnasium_env_reports_scale_in_info():
    env = gymnasium.make(SCALED_ENV_ID)
    lo, hi = DEFAULT_SCALE_RANGE
    scales = set()
    for seed in range(5):
        _, info = env.reset(seed=seed)
        assert 10**lo <= info["scale"] <= 10**hi
        _, _, _, _, info2 = env.step(0)
        assert info2["scale"] == info["scale"]
        scales.add(info["scale"])
    assert len(scales) == 5
    _, info = gymnasium.make(ENV_ID).reset(seed=0)
    assert info["scale"] == 1.0


# --------------------------------------------------------------------------------------------------------
# 6. Gymnasium API
# --------------------------------------------------------------------------------------------------------
def test_check_env_passes_and_make_works():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(TabularMDPEnv())
        check_env(TabularMDPEnv(num_states=3, num_actions=2, horizon=4, scale_range=(0.0, 1.0)))
        env = gymnasium.make(ENV_ID)
        check_env(env.unwrapped)
    unexpected = [str(w.message) for w in caught if "spec" not in str(w.message)]
    assert not unexpected, unexpected

    assert env.observation_space == gymnasium.spaces.Box(0, 1, (S,), np.float32)
    assert env.action_space == gymnasium.spaces.Discrete(A)
    small = gymnasium.make(ENV_ID, num_states=4, num_actions=2, horizon=3)
    obs, _ = small.reset(seed=0)
    assert obs.dtype == np.float32 and obs.tolist() == [1.0, 0.0, 0.0, 0.0]
    flags = [small.step(1)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        importlib.reload(metaopt.envs)
    assert ENV_ID in gymnasium.registry and SCALED_ENV_ID in gymnasium.registry


def test_reset_options_task_and_step_after_end():
    task = sample_tasks(1, seed=0, scale_range=(2.0, 2.0)).task(0)
    env = TabularMDPEnv(horizon=2)
    _, info = env.reset(seed=0, options={"task": task})
    assert info["scale"] == pytest.approx(100.0) and env.task is task
    env.reset(seed=1)  # an explicitly set task survives reseeding
    assert env.task is task
    env.step(0)
    env.step(0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


# --------------------------------------------------------------------------------------------------------
# 7. Bad inputs
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: sample_tasks(0), ValueError, r"num_tasks must be a positive int, got 0"),
        (lambda: sample_tasks(2.5), TypeError, r"num_tasks .*2\.5"),
        (lambda: sample_tasks(2, num_states=-1), ValueError, r"num_states .*-1"),
        (lambda: sample_tasks(2, scale_range=(3, -2)), ValueError, r"scale_range .*lo <= hi.*\(3, -2\)"),
        (lambda: sample_tasks(2, scale_range=(1,)), TypeError, r"scale_range .*pair.*\(1,\)"),
        (lambda: sample_tasks(2, seed=1, generator=torch.Generator()), ValueError, r"seed or generator"),
        (lambda: sample_tasks(2, seed=-3), ValueError, r"seed .*-3"),
        (lambda: draw_noise(2, 0, 3), ValueError, r"num_trajectories .*got 0"),
        (lambda: draw_noise(2, 2, 3, dtype=torch.long), TypeError, r"dtype .*floating"),
        (lambda: BatchedTabularMDP(sample_tasks(2, seed=0), horizon=0), ValueError, r"horizon .*got 0"),
        (lambda: BatchedTabularMDP("tasks"), TypeError, r"tasks must be a TaskBatch, got str"),
        (lambda: TabularMDPEnv(horizon=-2), ValueError, r"horizon .*-2"),
        (lambda: TabularMDPEnv(scale_range=(1, 0)), ValueError, r"scale_range .*lo <= hi"),
        (lambda: sample_tasks(2, seed=0).task(5), IndexError, r"i=5 .*2 tasks"),
    ],
)
def test_bad_arguments_raise(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_rollout_inputs_raise():
    sim = BatchedTabularMDP(sample_tasks(2, seed=0))
    gen = torch.Generator().manual_seed(0)
    wrong_tasks = draw_noise(3, 4, T, generator=gen)
    with pytest.raises(ValueError, match=r"noise\.action_u must have shape \[N, B, T\] = \[2, B, 10\].*\(3, 4, 10\)"):
        sim.rollout(uniform_policy, wrong_tasks)
    with pytest.raises(ValueError, match=r"horizon=10.*\(2, 4, 6\)"):
        sim.rollout(uniform_policy, draw_noise(2, 4, 6, generator=gen))
    good = sim.draw_noise(4, generator=gen)
    with pytest.raises(ValueError, match=r"noise\.reward_z .*\(2, 3, 10\)"):
        sim.rollout(uniform_policy, good._replace(reward_z=good.reward_z[:, :3]))
    with pytest.raises(TypeError, match=r"noise\.action_u must have dtype torch\.float32.*torch\.float64"):
        sim.rollout(uniform_policy, draw_noise(2, 4, T, generator=gen, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"noise must be a RolloutNoise, got tuple"):
        sim.rollout(uniform_policy, tuple(good))
    with pytest.raises(
        ValueError, match=r"policy_fn must return logits of shape \[N, B, A\] = \[2, 4, 5\], got \[2, 4, 3\]"
    ):
        sim.rollout(lambda obs: torch.zeros(2, 4, 3), good)
    with pytest.raises(TypeError, match=r"policy_fn must return a torch\.Tensor.*ndarray"):
        sim.rollout(lambda obs: np.zeros((2, 4, 5)), good)
    with pytest.raises(TypeError, match=r"policy_fn must be callable"):
        sim.rollout(None, good)
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 5\)"):
        sim.rollout_actions(torch.full((2, 4, T), 5), good)
    with pytest.raises(ValueError, match=r"actions must have shape \[N, B, T\] = \[2, 4, 10\].*\[2, 4, 9\]"):
        sim.rollout_actions(torch.zeros(2, 4, 9, dtype=torch.long), good)
    with pytest.raises(TypeError, match=r"actions must be an integer"):
        sim.rollout_actions(torch.zeros(2, 4, T), good)
    assert isinstance(good, RolloutNoise)


def test_bad_env_inputs_raise():
    env = TabularMDPEnv()
    with pytest.raises(RuntimeError, match=r"reset\(\) before step"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be in \[0, 5\), got 7"):
        env.step(7)
    with pytest.raises(TypeError, match=r"action must be an int"):
        env.step(1.5)
    small = sample_tasks(1, num_states=4, seed=0).task(0)
    with pytest.raises(ValueError, match=r"task\.transitions must have shape \(10, 5, 10\).*\(4, 5, 4\)"):
        env.reset_task(small)
    bad = TabularMDPTask(torch.full((S, A, S), 0.5, dtype=torch.float64), torch.zeros(S, A, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"probability distributions"):
        env.reset_task(bad)
    with pytest.raises(TypeError, match=r"task must be a TabularMDPTask, got dict"):
        env.reset_task({})
