"""The meta-objective artifact, measured: what pushes a learned beta and lr at initialization, term by term.

With PopArt, an outer value loss in normalized units ``((G - mu')/sigma' - n')^2`` is lowered by inflating sigma'
through beta, so its meta-gradient moves beta without any better adaptation; the stop-gradient-scale error
``(G - V)/sg(sigma')`` (metaopt's default) has no such path. And the value term dominates the lr's meta-gradient,
which is why metaopt's learned lr and beta follow the post-adaptation policy term by default. This prints the
meta-gradients of ``log_lr`` and ``logit_beta`` from each outer term, for both value errors, on one iteration of
the configuration below (the old options: one inner step, no debiasing, POP at the first step).
Run ``python examples/meta_objective_artifact.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metaopt.dataclass_args import parse_dataclass
from metaopt.maml import MAMLConfig, MetaLearner


@dataclass
class Args:
    """Arguments of the example; each field is a command-line option."""

    seed: int = 0
    """seed of the initial weights and the iteration's tasks"""
    tasks: int = 40
    """tasks of the iteration"""
    trajectories: int = 20
    """episodes per task"""


def measure(args: Args) -> dict[str, dict[str, float]]:
    """Per value-error form: d/dlog_lr and d/dlogit_beta of the policy and of the value term."""
    out = {}
    for units in ("normalized", "sg_scale"):
        cfg = MAMLConfig(popart=True, scaled=True, learn=("lr", "beta"), inner_steps=1, debias=False, first_pop=True,
                         outer_value=units, seed=args.seed, tasks=args.tasks, trajectories=args.trajectories)
        learner = MetaLearner(cfg)
        policy, value, _ = learner.outer_terms(learner.sample_iteration())
        meta = [learner.meta.log_lr, learner.meta.logit_beta]
        g_pol = torch.autograd.grad(policy.sum(), meta, retain_graph=True)
        g_val = torch.autograd.grad(cfg.value_coef * value.sum(), meta)
        out[units] = {"lr/policy": float(g_pol[0]), "lr/value": float(g_val[0]),
                      "beta/policy": float(g_pol[1]), "beta/value": float(g_val[1])}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Print the table."""
    args = parse_dataclass(Args, argv, description=__doc__.splitlines()[0])
    torch.set_num_threads(1)
    print(f"{'value error':<12} {'d/dlog_lr policy':>17} {'value':>10} {'d/dlogit_beta policy':>21} {'value':>10}")
    for units, g in measure(args).items():
        print(f"{units:<12} {g['lr/policy']:17.4f} {g['lr/value']:10.3f} {g['beta/policy']:21.4f} "
              f"{g['beta/value']:10.3f}")


if __name__ == "__main__":
    main()
