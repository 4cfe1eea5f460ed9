r"""DARTS' one-step hypergradient: exact autograd on each engine vs the finite-difference approximation.

Bilevel problem: min_alpha L_val(w'(alpha), alpha) with w' = w - xi * grad_w L_train(w, alpha), where the
model is a softmax(alpha)-weighted mix of 4 candidate operations (linear, tanh MLP, sine, quadratic).

* exact:   autograd through the inner step (``metaopt.engines.adapt``; alpha enters the inner loss);
* DARTS:   grad_alpha L_val(w', alpha) - xi [grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)] / (2 eps),
           w+- = w +- eps grad_w' L_val(w', alpha), eps = 0.01 / ||grad_w' L_val||  (no second derivatives);
* first-order DARTS (xi = 0): grad_alpha L_val(w, alpha), which drops the second-order term.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from metaopt.dataclass_args import parse_dataclass
from metaopt.engines import ENGINES, InnerLoop, adapt
from metaopt.meta_params import MetaParameters
from metaopt.verify import relative_error
from metaopt.verify.catalogue import DartsProblem, darts_fd_hypergradient, make_darts_problem


@dataclass
class Args:
    """Arguments; each field is a command-line option."""

    seed: int = 0
    """seed of the weights, the logits alpha and the data"""
    xi: float = 0.1
    """inner step size xi"""
    samples: int = 32
    """samples in each of the train and validation splits"""


def exact_hypergradient(problem: DartsProblem, engine: str) -> torch.Tensor:
    """grad_alpha L_val(w - xi grad_w L_train(w, alpha), alpha), differentiating through the inner step."""
    inner = InnerLoop(lambda params, alpha, state: problem.loss(params, problem.train, alpha), steps=1)
    meta = MetaParameters(lr=problem.xi, dtype=torch.float64)  # xi is fixed here, not learned
    w1 = adapt(problem.model, inner, problem.alpha, meta, engine=engine).params
    val_loss = problem.loss(w1, problem.val, problem.alpha)
    return torch.autograd.grad(val_loss, problem.alpha)[0]


def main(args: Args) -> int:
    """Print the exact, DARTS and first-order hypergradients; return 1 if DARTS' approximation is off."""
    problem = make_darts_problem(seed=args.seed, n=args.samples, xi=args.xi)
    approx = darts_fd_hypergradient(problem)
    first_order = darts_fd_hypergradient(problem, xi=0.0)
    print(f"softmax(alpha) = {torch.softmax(problem.alpha, -1).detach().numpy().round(3)}")
    print(f"DARTS FD approximation: {approx.numpy().round(6)}")
    print(f"first-order (xi = 0):   {first_order.numpy().round(6)}")
    ok = True
    for engine in ENGINES:
        exact = exact_hypergradient(problem, engine)
        err, err_first = relative_error(approx, exact), relative_error(first_order, exact)
        print(f"exact [{engine:<8}]:      {exact.numpy().round(6)}  "
              f"rel. error of DARTS {err:.1e}, of first-order {err_first:.1e}")
        ok &= err <= 1e-6
    print("DARTS' approximation matches the exact hypergradient" if ok else "MISMATCH")
    return 0 if ok else 1


def parse_args() -> Args:
    """Parse :class:`Args` from the command line."""
    return parse_dataclass(Args, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main(parse_args()))
