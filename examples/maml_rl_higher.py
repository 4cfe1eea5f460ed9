"""MAML-A2C on TabularMDP with higher, plus metaopt's differentiable PopArt and learnable beta and inner lr.

The loop is the usual higher MAML loop (``higher.innerloop_ctx`` per task with
``copy_initial_weights=False`` so the initial weights get meta-gradients, the learnable rate passed with
``override={"lr": [lr]}``, outer Adam); the lines marked ``# metaopt:`` add PopArt value normalization
(ART on the lambda-returns, POP on the value head's fast weights via ``fmodel.update_params``) and
meta-learn ``beta = sigmoid(logit_beta)`` and ``lr = exp(log_lr)``. With the same seed and settings, the
first meta-gradient equals ``metaopt maml-rl --engine higher --popart --learn beta,lr``'s.
Run ``python examples/maml_rl_higher.py --iterations 2 --tasks 3 --trajectories 4`` for a smoke test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import higher
import torch
import torch.nn.functional as F
from torch import Tensor

from metaopt import popart
from metaopt.dataclass_args import parse_dataclass
from metaopt.envs import BatchedTabularMDP, RolloutNoise, TaskBatch, draw_noise, sample_tasks
from metaopt.rl import ActorCritic, lambda_returns, task_major

Batch = dict[str, Tensor]
Data = tuple[TaskBatch, RolloutNoise, RolloutNoise]  # one iteration's tasks, inner and outer noise


@dataclass
class Args:
    """Arguments of the example; each field is a command-line option."""

    seed: int = 0
    """seed of the initial weights, the tasks and the rollouts"""
    iterations: int = 500
    """meta-iterations (outer Adam steps)"""
    tasks: int = 40
    """tasks per meta-iteration"""
    trajectories: int = 20
    """episodes per task for each of the inner and the outer batch"""
    inner_steps: int = 1
    """inner SGD steps per task (differentiable, through higher)"""
    inner_lr: float = 0.1
    """initial inner learning rate (learned as log_lr)"""
    beta: float = 0.1
    """initial PopArt step size (learned as logit_beta)"""
    outer_lr: float = 1e-3
    """outer Adam learning rate"""
    gamma: float = 0.99
    """discount"""
    lam: float = 0.95
    """lambda of the lambda-returns"""
    value_coef: float = 0.5
    """weight of the value loss"""
    hidden: int = 32
    """hidden width of the actor-critic"""
    num_states: int = 10
    """TabularMDP states"""
    num_actions: int = 5
    """TabularMDP actions"""
    horizon: int = 10
    """episode length"""
    dtype: str = "float32"
    """float32 or float64"""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Parse :class:`Args` from the command line (help texts are the field docstrings)."""
    return parse_dataclass(Args, argv, description=__doc__.splitlines()[0], choices={"dtype": ("float32", "float64")})


def returns_and_outputs(net: Callable, batch: Batch, state: popart.PopArtState, args: Args) -> tuple[Tensor, ...]:
    """Policy logits, normalized values ``n(s)`` and lambda-returns bootstrapped from ``V = sigma n + mu``."""
    logits, n = net(batch["observations"])
    _, n_last = net(batch["last_observations"])
    v, v_last = popart.unnormalize(state, n), popart.unnormalize(state, n_last)  # metaopt: V = sigma n + mu
    g = lambda_returns(batch["rewards"], v.detach(), v_last.detach(), batch["dones"], args.gamma, args.lam)
    return logits, n, g


def a2c_loss(net: Callable, batch: Batch, state: popart.PopArtState, args: Args) -> Tensor:
    """A2C loss whose value error and advantages are measured on PopArt-normalized returns."""
    logits, n, g = returns_and_outputs(net, batch, state, args)
    adv = popart.normalize(state, g) - n  # metaopt: (G - mu) / sigma - n(s)
    logp = F.log_softmax(logits, dim=-1).gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
    return -(adv.detach() * logp).mean() + args.value_coef * (adv**2).mean()


def sample_iteration(gen: torch.Generator, args: Args) -> Data:
    """Tasks, then the inner and the outer rollouts' random numbers, all from ``gen`` (metaopt's order)."""
    tasks = sample_tasks(args.tasks, num_states=args.num_states, num_actions=args.num_actions, generator=gen)
    noise = [
        draw_noise(args.tasks, args.trajectories, args.horizon, generator=gen, dtype=getattr(torch, args.dtype))
        for _ in range(2)
    ]
    return tasks, noise[0], noise[1]


def meta_loss(policy: ActorCritic, log_lr: Tensor, logit_beta: Tensor, data: Data, args: Args) -> tuple[Tensor, ...]:
    """One meta-iteration's outer loss.

    Returns:
        ``(loss, pre_return, post_return)``: the outer A2C loss summed over tasks (differentiable to the
        policy's weights, ``log_lr`` and ``logit_beta``) and the mean episode returns before and after adaptation.
    """
    tasks, noise_pre, noise_post = data
    dtype = getattr(torch, args.dtype)
    lr, beta = log_lr.exp(), torch.sigmoid(logit_beta)  # metaopt: learnable inner lr and PopArt beta
    inner_opt = torch.optim.SGD(policy.parameters(), lr=args.inner_lr)  # its lr is overridden by `lr` below
    names = [n for n, _ in policy.named_parameters()]
    sim = BatchedTabularMDP(tasks, args.horizon, dtype=dtype)
    pre = sim.rollout(lambda obs: policy(obs)[0], noise_pre)  # every task starts from theta_0
    pre_batch, outer_losses, post_returns = task_major(pre), [], []
    for i in range(args.tasks):
        inner_batch = {k: v[i] for k, v in pre_batch.items()}
        state = popart.init(1, dtype=dtype)  # metaopt: per-task statistics, mu = 0, sigma = 1
        ctx = higher.innerloop_ctx(policy, inner_opt, copy_initial_weights=False, override={"lr": [lr]})
        with ctx as (fmodel, diffopt):
            for _ in range(args.inner_steps):
                new = popart.art(state, returns_and_outputs(fmodel, inner_batch, state, args)[2], beta)  # metaopt: ART
                fast = dict(zip(names, fmodel.fast_params, strict=True))
                fast["value.weight"], fast["value.bias"] = popart.pop(  # metaopt: POP, output-preserving
                    fast["value.weight"], fast["value.bias"], state, new
                )
                fmodel.update_params(list(fast.values()))  # metaopt: continue from the rescaled value head
                state = new
                diffopt.step(a2c_loss(fmodel, inner_batch, state, args))
            post = sim.select(i).rollout(lambda obs: fmodel(obs)[0], noise_post.select(i))
            outer_losses.append(a2c_loss(fmodel, {k: v[0] for k, v in task_major(post).items()}, state, args))
            post_returns.append(post.rewards.sum(0).mean())
    return torch.stack(outer_losses).sum(), pre.rewards.sum(0).mean(), torch.stack(post_returns).mean()


def setup(args: Args) -> tuple[ActorCritic, Tensor, Tensor, torch.Generator]:
    """Seed everything; return the policy, the meta-parameters and the run's generator."""
    dtype = getattr(torch, args.dtype)
    # ---- seeding: weights from torch.manual_seed, tasks and rollouts from one generator (as metaopt maml-rl)
    torch.manual_seed(args.seed)
    policy = ActorCritic(args.num_states, args.num_actions, args.hidden).to(dtype)
    gen = torch.Generator().manual_seed(args.seed)
    # ----
    log_lr = torch.tensor(math.log(args.inner_lr), dtype=dtype, requires_grad=True)  # metaopt: lr = exp(log_lr)
    logit_beta = torch.tensor(math.log(args.beta) - math.log1p(-args.beta), dtype=dtype, requires_grad=True)  # metaopt
    return policy, log_lr, logit_beta, gen


def first_meta_gradient(args: Args) -> dict[str, Tensor]:
    """The meta-gradient of the first iteration by parameter name (plus ``log_lr`` and ``logit_beta``)."""
    policy, log_lr, logit_beta, gen = setup(args)
    loss = meta_loss(policy, log_lr, logit_beta, sample_iteration(gen, args), args)[0]
    named = dict(policy.named_parameters()) | {"log_lr": log_lr, "logit_beta": logit_beta}
    return dict(zip(named, torch.autograd.grad(loss, list(named.values())), strict=True))


def main(argv: Sequence[str] | None = None) -> None:
    """Meta-train and print one line per iteration."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny ops: one thread is fastest
    policy, log_lr, logit_beta, gen = setup(args)
    outer_opt = torch.optim.Adam([*policy.parameters(), log_lr, logit_beta], lr=args.outer_lr)
    print(f"run TabularMDP__maml_rl_higher__{args.seed}")
    for it in range(1, args.iterations + 1):
        outer_opt.zero_grad()
        loss, pre_ret, post_ret = meta_loss(policy, log_lr, logit_beta, sample_iteration(gen, args), args)
        loss.backward()
        outer_opt.step()
        print(
            f"iter {it:4d}  loss {loss.item() / args.tasks:8.4f}  pre_return {pre_ret.item():7.3f}  "
            f"post_return {post_ret.item():7.3f}  beta {torch.sigmoid(logit_beta).item():.4f}  "
            f"lr {log_lr.exp().item():.4f}"
        )


if __name__ == "__main__":
    main()
