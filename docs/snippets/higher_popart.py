"""Differentiable PopArt in a `higher` inner loop, learning PopArt's beta and the inner lr."""

import math

import higher
import torch
from torch import nn

from metaopt import popart

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))  # "2" is the value head
names = [name for name, _ in model.named_parameters()]
log_lr = torch.tensor(math.log(0.1), requires_grad=True)  # lr = exp(log_lr) > 0
logit_beta = torch.tensor(0.0, requires_grad=True)  # beta = sigmoid(logit_beta) in (0, 1)
outer_opt = torch.optim.Adam([*model.parameters(), log_lr, logit_beta], lr=1e-3)
inner_opt = torch.optim.SGD(model.parameters(), lr=0.1)  # its lr is overridden by exp(log_lr) below

for iteration in range(3):
    scale = 10.0 ** (4 * torch.rand(()) - 2)  # each task has targets of a different scale
    x, x_val = torch.randn(32, 3), torch.randn(32, 3)
    y, y_val = scale * x.sum(-1), scale * x_val.sum(-1)
    state = popart.init(1)  # per-task statistics: mu = 0, sigma = 1
    with higher.innerloop_ctx(
        model, inner_opt, copy_initial_weights=False, override={"lr": [log_lr.exp()]}
    ) as (fmodel, diffopt):
        for _ in range(2):
            new = popart.art(state, y, torch.sigmoid(logit_beta))  # ART: track the targets' mean and scale
            fast = dict(zip(names, fmodel.fast_params, strict=True))
            before = popart.unnormalize(state, fmodel(x).squeeze(-1))
            fast["2.weight"], fast["2.bias"] = popart.pop(fast["2.weight"], fast["2.bias"], state, new)  # POP
            fmodel.update_params(list(fast.values()))  # continue from the rescaled value head
            state = new
            after = popart.unnormalize(state, fmodel(x).squeeze(-1))
            torch.testing.assert_close(after, before)  # POP preserves the unnormalized outputs
            inner_loss = ((popart.normalize(state, y) - fmodel(x).squeeze(-1)) ** 2).mean()
            diffopt.step(inner_loss)
        outer_loss = ((popart.normalize(state, y_val) - fmodel(x_val).squeeze(-1)) ** 2).mean()
    outer_opt.zero_grad()
    outer_loss.backward()  # through the unrolled steps, ART and POP into theta_0, log_lr and logit_beta
    assert torch.isfinite(logit_beta.grad) and logit_beta.grad != 0 and log_lr.grad != 0
    outer_opt.step()
    print(f"iteration {iteration}: outer loss {outer_loss.item():.4f}, dL/dlogit_beta {logit_beta.grad.item():+.3g}")
