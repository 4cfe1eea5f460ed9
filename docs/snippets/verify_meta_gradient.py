"""Check your own meta-gradient against finite differences with `metaopt.verify.check_gradients`."""

import math

import torch

from metaopt import popart
from metaopt.verify import check_gradients

torch.manual_seed(0)
dtype = torch.float64  # finite differences need float64 to be meaningful
x, x_val = torch.randn(16, 3, dtype=dtype), torch.randn(16, 3, dtype=dtype)
y, y_val = 50 * x.sum(-1) + 20, 50 * x_val.sum(-1) + 20
w0 = torch.randn(1, 3, dtype=dtype, requires_grad=True)  # theta_0: a linear value head
b0 = torch.zeros(1, dtype=dtype, requires_grad=True)
log_lr = torch.tensor(math.log(0.1), dtype=dtype, requires_grad=True)
logit_beta = torch.tensor(0.0, dtype=dtype, requires_grad=True)


def meta_objective(stop_gradient: bool = False) -> torch.Tensor:
    """Two inner SGD steps with ART and POP, then the outer loss; rebuilt from scratch on every call."""
    w, b, state = w0, b0, popart.init(1, dtype=dtype)
    for _ in range(2):
        new = popart.art(state, y, torch.sigmoid(logit_beta), stop_gradient=stop_gradient)
        w, b = popart.pop(w, b, state, new)
        state = new
        loss = ((popart.normalize(state, y) - (x @ w.T + b).squeeze(-1)) ** 2).mean()
        gw, gb = torch.autograd.grad(loss, [w, b], create_graph=True)
        w, b = w - log_lr.exp() * gw, b - log_lr.exp() * gb
    return ((popart.normalize(state, y_val) - (x_val @ w.T + b).squeeze(-1)) ** 2).mean()


inputs = {"w0": w0, "b0": b0, "log_lr": log_lr, "logit_beta": logit_beta}
report = check_gradients(meta_objective, inputs, rtol=1e-6)
print(report.table())
assert report.passed

# A gradient that is silently wrong is caught: detaching the statistics (rlax's stop-gradient) removes the
# path from beta to the loss through ART, while the finite differences still see it.
broken = check_gradients(lambda: meta_objective(stop_gradient=True), inputs, rtol=1e-6)
assert not broken["logit_beta"].passed and broken["log_lr"].passed
print(f"with stop_gradient=True: logit_beta rel. error {broken['logit_beta'].rel_error:.2f} (caught)")
