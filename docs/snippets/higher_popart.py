"""Differentiable PopArt in a `higher` inner loop, learning PopArt's beta and the inner lr."""

import math

import higher
import torch
from torch import nn
from torch.func import functional_call

import metaopt
from metaopt import popart

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))  # "2" is the value head
log_lr = torch.tensor(math.log(0.1), requires_grad=True)  # lr = exp(log_lr) > 0
logit_beta = torch.tensor(0.0, requires_grad=True)  # beta = sigmoid(logit_beta) in (0, 1)
outer_opt = torch.optim.Adam([*model.parameters(), log_lr, logit_beta], lr=1e-3)
inner_opt = torch.optim.SGD(model.parameters(), lr=0.1)  # its lr is overridden by exp(log_lr) below
STEPS = 2


def sample_task():
    """A regression task (x, y) and held-out data (x_val, y_val) whose targets have a random scale."""
    scale = 10.0 ** (4 * torch.rand(()) - 2)  # 1e-2 to 1e2
    x, x_val = torch.randn(32, 3), torch.randn(32, 3)
    return x, scale * x.sum(-1), x_val, scale * x_val.sum(-1)


def inner_loss(pred, y, state):
    """PopArt's value loss: the normalized prediction regressed on the normalized targets."""
    return ((popart.normalize(state, y) - pred.squeeze(-1)) ** 2).mean()


def outer_loss(pred, y, state):
    """The error in the task's units over a stop-gradient scale (a normalized one could be gamed through sigma)."""
    return (((y - popart.unnormalize(state, pred.squeeze(-1))) / state.sigma.detach()) ** 2).mean()


def task_loss(x, y, x_val, y_val):
    """Adapt to one task with higher (ART, POP, one SGD step per inner step); return the outer loss."""
    state = popart.init(1)  # fresh per-task statistics: mu = 0, sigma = 1
    lr = [log_lr.exp()]  # a LIST with one tensor per parameter group (a bare tensor fails: "len() of a 0-d tensor")
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, override={"lr": lr}) as (fmodel, diffopt):
        for _ in range(STEPS):
            new = popart.art(state, y, torch.sigmoid(logit_beta))  # ART: track the targets' mean and scale
            before = popart.unnormalize(state, fmodel(x))
            metaopt.pop_fmodel_(fmodel, "2.weight", "2.bias", state, new)  # POP on the fast value head
            state = new
            torch.testing.assert_close(popart.unnormalize(state, fmodel(x)), before)  # POP preserves the outputs
            diffopt.step(inner_loss(fmodel(x), y, state))
        return outer_loss(fmodel(x_val), y_val, state)


for iteration in range(3):
    loss = task_loss(*sample_task())
    outer_opt.zero_grad()
    loss.backward()  # through the unrolled steps, ART and POP into theta_0, log_lr and logit_beta
    assert torch.isfinite(logit_beta.grad) and logit_beta.grad != 0 and log_lr.grad != 0
    outer_opt.step()
    print(f"iteration {iteration}: outer loss {loss.item():.4f}, dL/dlogit_beta {logit_beta.grad.item():+.3g}")

# The same inner loop described once for metaopt's engines gives the same meta-gradient.
x, y, x_val, y_val = sample_task()
leaves = [*model.parameters(), log_lr, logit_beta]
by_hand = torch.autograd.grad(task_loss(x, y, x_val, y_val), leaves)
meta = metaopt.MetaParameters(lr=log_lr.exp().item(), beta=torch.sigmoid(logit_beta).item(), learn=("lr", "beta"))
inner = metaopt.InnerLoop(
    lambda p, batch, state: inner_loss(functional_call(model, p, (batch[0],)), batch[1], state), steps=STEPS,
    popart=metaopt.PopArtSpec("2.weight", "2.bias", targets=lambda p, batch, state: batch[1],
                              debias=False, first_pop=True),  # the hand-written loop's plain ART, POP at every step
)
res = metaopt.adapt(model, inner, (x, y), meta, engine="higher", popart_state=popart.init(1))
engine = torch.autograd.grad(outer_loss(functional_call(model, res.params, (x_val,)), y_val, res.popart_state),
                             [*model.parameters(), meta.log_lr, meta.logit_beta])
for a, b in zip(by_hand, engine, strict=True):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
print(f"metaopt.adapt(engine='higher') gives the same meta-gradient: dL/dlog_lr {engine[-2].item():+.4g}")
