"""Differentiable PopArt in a `torchopt.MetaSGD` inner loop, learning PopArt's beta and the inner lr."""

import math

import torch
import torchopt
from torch import nn

from metaopt import popart

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
head = model[2]  # the value head that POP rescales
log_lr = torch.tensor(math.log(0.1), requires_grad=True)
logit_beta = torch.tensor(0.0, requires_grad=True)
outer_opt = torch.optim.Adam([*model.parameters(), log_lr, logit_beta], lr=1e-3)

for iteration in range(3):
    scale = 10.0 ** (4 * torch.rand(()) - 2)
    x, x_val = torch.randn(32, 3), torch.randn(32, 3)
    y, y_val = scale * x.sum(-1), scale * x_val.sum(-1)
    inner_opt = torchopt.MetaSGD(model, lr=log_lr.exp())  # a tensor lr: differentiable
    saved = torchopt.extract_state_dict(model)  # theta_0, restored after the task
    state = popart.init(1)
    for _ in range(2):
        new = popart.art(state, y, torch.sigmoid(logit_beta))  # ART
        w, b = popart.pop(head.weight, head.bias, state, new)  # POP on the current fast weights
        head._parameters["weight"], head._parameters["bias"] = w, b  # put them back as MetaSGD does
        state = new
        inner_opt.step(((popart.normalize(state, y) - model(x).squeeze(-1)) ** 2).mean())
    outer_loss = ((popart.normalize(state, y_val) - model(x_val).squeeze(-1)) ** 2).mean()
    outer_opt.zero_grad()
    outer_loss.backward()
    torchopt.recover_state_dict(model, saved)
    assert torch.isfinite(logit_beta.grad) and logit_beta.grad != 0 and log_lr.grad != 0
    outer_opt.step()
    print(f"iteration {iteration}: outer loss {outer_loss.item():.4f}, dL/dlogit_beta {logit_beta.grad.item():+.3g}")
