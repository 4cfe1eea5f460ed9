"""Differentiable PopArt in a `torchopt.MetaSGD` inner loop, learning PopArt's beta and the inner lr."""

import math

import torch
import torchopt
from torch import nn
from torch.func import functional_call

import metaopt
from metaopt import popart

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))  # "2" is the value head
log_lr = torch.tensor(math.log(0.1), requires_grad=True)  # lr = exp(log_lr) > 0
logit_beta = torch.tensor(0.0, requires_grad=True)  # beta = sigmoid(logit_beta) in (0, 1)
outer_opt = torch.optim.Adam([*model.parameters(), log_lr, logit_beta], lr=1e-3)
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
    """Adapt the module's own parameter slots with MetaSGD (ART, POP, one step per inner step); the outer loss.

    The caller restores theta_0 with ``torchopt.recover_state_dict`` once the loss is backpropagated.
    """
    inner_opt = torchopt.MetaSGD(model, lr=log_lr.exp())  # a tensor lr: differentiable
    state = popart.init(1)  # fresh per-task statistics: mu = 0, sigma = 1
    for _ in range(STEPS):
        new = popart.art(state, y, torch.sigmoid(logit_beta))  # ART: track the targets' mean and scale
        before = popart.unnormalize(state, model(x))
        metaopt.pop_module_(model, "2.weight", "2.bias", state, new)  # POP on the fast weights in the module
        state = new
        torch.testing.assert_close(popart.unnormalize(state, model(x)), before)  # POP preserves the outputs
        inner_opt.step(inner_loss(model(x), y, state))
    return outer_loss(model(x_val), y_val, state)


for iteration in range(3):
    saved = torchopt.extract_state_dict(model)  # theta_0
    loss = task_loss(*sample_task())
    outer_opt.zero_grad()
    loss.backward()  # through the unrolled steps, ART and POP into theta_0, log_lr and logit_beta
    torchopt.recover_state_dict(model, saved)  # put theta_0 (the leaves) back into the module
    assert torch.isfinite(logit_beta.grad) and logit_beta.grad != 0 and log_lr.grad != 0
    outer_opt.step()
    print(f"iteration {iteration}: outer loss {loss.item():.4f}, dL/dlogit_beta {logit_beta.grad.item():+.3g}")

# The same inner loop described once for metaopt's engines gives the same meta-gradient.
x, y, x_val, y_val = sample_task()
leaves = [*model.parameters(), log_lr, logit_beta]
saved = torchopt.extract_state_dict(model)
by_hand = torch.autograd.grad(task_loss(x, y, x_val, y_val), leaves)
torchopt.recover_state_dict(model, saved)
meta = metaopt.MetaParameters(lr=log_lr.exp().item(), beta=torch.sigmoid(logit_beta).item(), learn=("lr", "beta"))
inner = metaopt.InnerLoop(
    lambda p, batch, state: inner_loss(functional_call(model, p, (batch[0],)), batch[1], state), steps=STEPS,
    popart=metaopt.PopArtSpec("2.weight", "2.bias", targets=lambda p, batch, state: batch[1],
                              debias=False, first_pop=True),  # the hand-written loop's plain ART, POP at every step
)
res = metaopt.adapt(model, inner, (x, y), meta, engine="torchopt", popart_state=popart.init(1))
engine = torch.autograd.grad(outer_loss(functional_call(model, res.params, (x_val,)), y_val, res.popart_state),
                             [*model.parameters(), meta.log_lr, meta.logit_beta])
for a, b in zip(by_hand, engine, strict=True):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
print(f"metaopt.adapt(engine='torchopt') gives the same meta-gradient: dL/dlog_lr {engine[-2].item():+.4g}")
