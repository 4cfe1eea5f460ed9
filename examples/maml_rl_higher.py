"""MAML-A2C on TabularMDP with higher, plus metaopt's differentiable PopArt and learnable beta and inner lr.

The loop is the usual higher MAML loop: ``higher.innerloop_ctx`` per task with ``copy_initial_weights=False``
(so theta_0 gets meta-gradients), the learnable rate passed with ``override={"lr": [lr]}``, ``diffopt.step``
per inner step on fresh episodes of the current fast weights, outer Adam. The lines marked ``# metaopt:``
add PopArt: ART on the lambda-returns with the debiased step size (the first step sets mu, sigma to the
batch's mean and std), POP on the value head's fast weights via ``fmodel.update_params`` from the second step
on (theta_0's head is read as a normalized prediction), an outer value error (G - V) / stopgrad(sigma), and
meta-learned ``beta = sigmoid(logit_beta)`` and ``lr = exp(log_lr)``, which follow the outer policy term
alone. With the same seed and settings, the first meta-gradient equals
``metaopt maml-rl --engine higher --popart --learn beta,lr``'s.
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
from metaopt.envs import BatchedTabularMDP, RolloutNoise, TaskBatch, Trajectories, draw_noise, sample_tasks
from metaopt.integrations import pop_fmodel_
from metaopt.rl import ActorCritic, lambda_returns, task_major

Batch = dict[str, Tensor]
Data = tuple[TaskBatch, list[RolloutNoise], RolloutNoise]  # one iteration's tasks, per-step and post noise


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
    """episodes per task in each inner step's batch and in the outer batch"""
    inner_steps: int = 2
    """inner SGD steps per task (via higher), each on fresh episodes (2: one debiased ART step leaves beta no role)"""
    inner_lr: float = 0.1
    """initial inner learning rate (learned as log_lr)"""
    beta: float = 0.1
    """initial PopArt step size (learned as logit_beta)"""
    outer_lr: float = 1e-3
    """outer Adam learning rate of the policy's weights"""
    meta_lr: float = 0.01
    """outer Adam learning rate of log_lr and logit_beta"""
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


def a2c_terms(net: Callable, batch: Batch, state: popart.PopArtState, args: Args, *, outer: bool = False) -> tuple:
    """Lambda-returns ``G`` (bootstrapped from ``sigma sg(n) + mu``) and the A2C policy and value terms.

    Inner loss: only the network's output is stopped, so the advantage ``(G - mu) / sigma - sg(n)`` and the
    bootstrap keep their dependence on the statistics (beta's meta-gradient path); the value error is
    ``(G - mu) / sigma - n``. Outer terms: the advantage is a constant and the value error ``(G - V) / sg(sigma)``.
    """
    logits, n = net(batch["observations"])
    _, n_last = net(batch["last_observations"])
    stats = popart.PopArtState(*(t.detach() for t in state)) if outer else state
    v, v_last = popart.unnormalize(stats, n.detach()), popart.unnormalize(stats, n_last.detach())  # metaopt: sg(n)
    g = lambda_returns(batch["rewards"], v, v_last, batch["dones"], args.gamma, args.lam)
    adv = (g - v) / stats.sigma  # metaopt: scale-free advantages, differentiable in the statistics
    values = popart.unnormalize(state, n)  # metaopt: V = sigma n + mu
    err = (g - values) / state.sigma.detach() if outer else popart.normalize(state, g) - n  # metaopt: value error
    logp = F.log_softmax(logits, dim=-1).gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
    return g, -(adv * logp).mean(), (err**2).mean()


def mc_returns(batch: Batch, args: Args) -> Tensor:
    """Monte-Carlo returns: the first ART targets of fresh statistics, before the value head's output has a unit."""
    zero = torch.zeros_like(batch["rewards"])
    return lambda_returns(batch["rewards"], zero, zero[0], batch["dones"], args.gamma, 1.0)


def sample_iteration(gen: torch.Generator, args: Args) -> Data:
    """Tasks, then each inner step's and the post-adaptation rollout's random numbers, all from ``gen``."""
    tasks = sample_tasks(args.tasks, num_states=args.num_states, num_actions=args.num_actions, generator=gen)
    kw = {"generator": gen, "dtype": getattr(torch, args.dtype)}
    noise = [draw_noise(args.tasks, args.trajectories, args.horizon, **kw) for _ in range(args.inner_steps + 1)]
    return tasks, noise[:-1], noise[-1]


def one_task(traj: Trajectories) -> Batch:
    """One task's trajectories (the simulator's ``[T, 1, B, ...]``) as a batch ``[T, B, ...]``."""
    return {k: v[0] for k, v in task_major(traj).items()}


def outer_terms(policy: ActorCritic, log_lr: Tensor, logit_beta: Tensor, data: Data, args: Args) -> tuple:
    """One meta-iteration: adapt every task, then its outer terms.

    Returns:
        ``(policy_term, value_term, pre_return, post_return)``: the outer policy and value terms summed over
        tasks (differentiable to the policy's weights, ``log_lr`` and ``logit_beta``) and the mean episode
        returns of ``theta_0`` and of the adapted weights.
    """
    tasks, noise_inner, noise_post = data
    dtype = getattr(torch, args.dtype)
    lr, beta = log_lr.exp(), torch.sigmoid(logit_beta)  # metaopt: learnable inner lr and PopArt beta
    inner_opt = torch.optim.SGD(policy.parameters(), lr=args.inner_lr)  # its lr is overridden by `lr` below
    sim = BatchedTabularMDP(tasks, args.horizon, dtype=dtype)
    pre = sim.rollout(lambda obs: policy(obs)[0], noise_inner[0])  # step 0: every task rolls out theta_0
    pis, values, post_returns = [], [], []
    for i in range(args.tasks):
        state = popart.init(1, dtype=dtype)  # metaopt: per-task statistics, mu = 0, sigma = 1
        ctx = higher.innerloop_ctx(policy, inner_opt, copy_initial_weights=False, override={"lr": [lr]})
        with ctx as (fmodel, diffopt):
            for k in range(args.inner_steps):
                if k == 0:  # theta_0's episodes (rolled out for all tasks at once)
                    batch = one_task(pre.select(i))
                else:  # fresh episodes of the current fast weights
                    batch = one_task(sim.select(i).rollout(lambda obs: fmodel(obs)[0], noise_inner[k].select(i)))
                y = a2c_terms(fmodel, batch, state, args)[0] if k else mc_returns(batch, args)  # metaopt: ART's targets
                new = popart.art(state, y, beta, debias=True)  # metaopt: ART
                if k > 0:  # metaopt: POP; at k = 0 theta_0's head is read as a normalized prediction
                    pop_fmodel_(fmodel, "value.weight", "value.bias", state, new)  # metaopt: rescale the fast head
                state = new
                _, pi, value = a2c_terms(fmodel, batch, state, args)
                diffopt.step(pi + args.value_coef * value)
            post = sim.select(i).rollout(lambda obs: fmodel(obs)[0], noise_post.select(i))
            _, pi, value = a2c_terms(fmodel, one_task(post), state, args, outer=True)
        pis.append(pi)
        values.append(value)
        post_returns.append(post.rewards.sum(0).mean())
    return sum(pis), sum(values), pre.rewards.sum(0).mean(), torch.stack(post_returns).mean()


def meta_gradient(policy: ActorCritic, log_lr: Tensor, logit_beta: Tensor, data: Data, args: Args) -> tuple:
    """The routed meta-gradient (name -> tensor), the outer loss and the pre- and post-adaptation returns.

    ``theta_0`` follows ``policy + value_coef * value``; ``log_lr`` and ``logit_beta`` the policy term alone.
    """
    pi, value, pre_ret, post_ret = outer_terms(policy, log_lr, logit_beta, data, args)
    g_lr, g_beta = torch.autograd.grad(pi, [log_lr, logit_beta], retain_graph=True)  # metaopt: policy objective
    loss, theta = pi + args.value_coef * value, dict(policy.named_parameters())
    grads = dict(zip(theta, torch.autograd.grad(loss, list(theta.values())), strict=True))
    return grads | {"log_lr": g_lr, "logit_beta": g_beta}, loss.detach(), pre_ret, post_ret


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
    """The routed meta-gradient of the first iteration by parameter name (plus ``log_lr`` and ``logit_beta``)."""
    policy, log_lr, logit_beta, gen = setup(args)
    return meta_gradient(policy, log_lr, logit_beta, sample_iteration(gen, args), args)[0]


def main(argv: Sequence[str] | None = None) -> None:
    """Meta-train and print one line per iteration."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny ops: one thread is fastest
    policy, log_lr, logit_beta, gen = setup(args)
    named = dict(policy.named_parameters()) | {"log_lr": log_lr, "logit_beta": logit_beta}
    groups = [{"params": list(policy.parameters())}, {"params": [log_lr, logit_beta], "lr": args.meta_lr}]
    outer_opt = torch.optim.Adam(groups, lr=args.outer_lr)  # metaopt: meta_lr for the meta-parameters
    print(f"run TabularMDP__maml_rl_higher__{args.seed}")
    for it in range(1, args.iterations + 1):
        grads, loss, pre_ret, post_ret = meta_gradient(policy, log_lr, logit_beta, sample_iteration(gen, args), args)
        for name, g in grads.items():
            named[name].grad = g
        outer_opt.step()
        print(
            f"iter {it:4d}  loss {loss.item() / args.tasks:8.4f}  pre_return {pre_ret.item():7.3f}  "
            f"post_return {post_ret.item():7.3f}  beta {torch.sigmoid(logit_beta).item():.4f}  "
            f"lr {log_lr.exp().item():.4f}"
        )


if __name__ == "__main__":
    main()
