"""One A2C agent with PopArt on a TabularMDP whose reward scale is redrawn during its lifetime; β and lr learned online.

Run ``python examples/online_a2c.py`` (600 updates, a few minutes on a CPU) or ``--updates 40 --period 10`` for a
smoke test. Every ``--period`` updates the reward scale becomes ``c = 10^U(-2, 3)`` (non-stationary value
targets); :class:`metaopt.online.OnlineMetaLearner` learns PopArt's β and the lr through the agent's own updates:
every ``--truncation`` updates, the A2C loss on the next batch of trajectories (sampled by the current policy, not
yet trained on; value error in real units over sg(σ)) is backpropagated through the last updates plus the statistics'
carried sensitivity. Prints progress; ``--out metrics.csv`` writes one row per update (scale, scale-normalized
return, β, lr). The final line is the scale-normalized lifetime return (mean of return / c). This is a demonstration,
not a tuned comparison: no fixed-β grid is run here.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call

from metaopt import popart as pa
from metaopt import rl
from metaopt.dataclass_args import parse_dataclass
from metaopt.envs.batched import BatchedTabularMDP
from metaopt.envs.tabular_mdp import sample_tasks
from metaopt.meta_params import MetaParameters
from metaopt.online import OnlineMetaLearner


@dataclass
class Args:
    """Arguments of the example; each field is a command-line option."""

    updates: int = 600
    """A2C updates in the agent's lifetime"""
    period: int = 100
    """the reward scale is redrawn every this many updates"""
    trajectories: int = 20
    """trajectories per update (and per meta-objective batch)"""
    hidden: int = 32
    """hidden width of the actor-critic"""
    learn: str = "beta,lr"
    """what is learned online (comma list of beta, lr; empty: fixed)"""
    beta: float = 0.01
    """PopArt's beta (initial value when learned)"""
    lr: float = 0.1
    """SGD lr of the agent (initial value when learned)"""
    truncation: int = 5
    """a meta-step every this many updates, through the last this many updates"""
    meta_lr: float = 3e-2
    """Adam's step size on log lr and logit beta"""
    seed: int = 0
    """seed of the task, the scales and the rollouts"""
    log_every: int = 50
    """progress line every this many updates"""
    out: str = ""
    """metrics CSV path (empty: none)"""


def main(argv: Sequence[str] | None = None) -> float:
    """Run one lifetime from the command line; returns the scale-normalized lifetime return."""
    args = parse_dataclass(Args, argv, description=__doc__.splitlines()[0])
    rows = run(args)
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    lifetime = sum(r["normalized_return"] for r in rows) / len(rows)
    assert math.isfinite(lifetime)
    print(f"scale-normalized lifetime return {lifetime:.3f} (learned: {args.learn or 'nothing'})")
    return lifetime


def run(args: Args, log: bool = True) -> list[dict[str, float]]:
    """One lifetime: per update, the scale, the scale-normalized return (before training on it), beta and lr."""
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    task = sample_tasks(1, seed=args.seed, dtype=torch.float32)
    model = rl.ActorCritic(hidden=args.hidden)
    cfg = rl.A2CConfig()
    inner = rl.make_inner_loop(model, popart=True, steps=args.truncation, cfg=cfg, debias=False,
                               first_pop=True)

    def meta_loss(p: dict[str, torch.Tensor], batch: rl.Batch, s: pa.PopArtState | None) -> torch.Tensor:
        terms = rl.a2c_terms(model, p, batch, s, cfg, value_units="sg_scale")  # real units over sg(sigma)
        return terms.policy + cfg.value_coef * terms.value

    learn = tuple(x for x in args.learn.split(",") if x)
    learner = OnlineMetaLearner(model, inner, MetaParameters(lr=args.lr, beta=args.beta, learn=learn), meta_loss,
                                popart_state=pa.init(1), meta_lr=args.meta_lr)
    rows: list[dict[str, float]] = []
    scale = 1.0
    with learner:
        for t in range(args.updates):
            if t % args.period == 0:
                scale = 10 ** float(torch.empty(()).uniform_(-2, 3, generator=gen))
            sim = BatchedTabularMDP(task._replace(scales=torch.tensor([scale])))
            params, _ = learner.current()
            traj = sim.rollout(lambda obs, p=params: functional_call(model, p, (obs,))[0],
                               sim.draw_noise(args.trajectories, generator=gen))
            batch = {k: v[0] for k, v in rl.task_major(traj).items()}
            ret = float(traj.rewards.sum(0).mean()) / scale  # before training on it: the agent's current return
            info = learner.step(batch)
            rows.append({"update": t, "scale": scale, "normalized_return": ret, "beta": float(info.beta),
                         "lr": float(info.lr)})
            if log and ((t + 1) % args.log_every == 0 or t + 1 == args.updates):
                recent = [r["normalized_return"] for r in rows[-args.log_every:]]
                print(f"update {t + 1:5d}  scale {scale:9.3g}  return/c {sum(recent) / len(recent):6.3f}  "
                      f"beta {float(info.beta):.3g}  lr {float(info.lr):.3g}", flush=True)
    return rows


if __name__ == "__main__":
    main()
