"""MAML with differentiable PopArt vectorized over tasks with `torch.func` (`functional_call`, `grad`, `vmap`)."""

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import metaopt
from metaopt import popart

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
theta0 = dict(model.named_parameters())
log_lr = torch.tensor(math.log(0.1), requires_grad=True)
logit_beta = torch.tensor(0.0, requires_grad=True)

tasks, inner_steps = 8, 2
scales = 10.0 ** (4 * torch.rand(tasks, 1) - 2)  # one target scale per task
xs, xs_val = torch.randn(tasks, 32, 3), torch.randn(tasks, 32, 3)
ys, ys_val = scales * xs.sum(-1), scales * xs_val.sum(-1)


def inner_loss(params: dict[str, Tensor], x: Tensor, y: Tensor, state: popart.PopArtState) -> Tensor:
    """Normalized value loss on fast weights ``params``."""
    return ((popart.normalize(state, y) - functional_call(model, params, (x,)).squeeze(-1)) ** 2).mean()


def outer_loss(params: dict[str, Tensor], x: Tensor, y: Tensor, state: popart.PopArtState) -> Tensor:
    """The error in the task's units over a stop-gradient scale (a normalized one could be gamed through sigma)."""
    pred = popart.unnormalize(state, functional_call(model, params, (x,)).squeeze(-1))
    return (((y - pred) / state.sigma.detach()) ** 2).mean()


def one_task(x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor) -> Tensor:
    """Adapt theta_0 to one task (ART, POP, SGD step per inner step); return the task's outer loss."""
    params, state = theta0, popart.init(1)
    lr, beta = log_lr.exp(), torch.sigmoid(logit_beta)
    for _ in range(inner_steps):
        new = popart.art(state, y, beta)
        w, b = popart.pop(params["2.weight"], params["2.bias"], state, new)
        params, state = {**params, "2.weight": w, "2.bias": b}, new
        grads = grad(inner_loss)(params, x, y, state)  # the statistics are constants here (PopArt's Algorithm 1)
        params = {k: p - lr * grads[k] for k, p in params.items()}
    return outer_loss(params, x_val, y_val, state)


outer = vmap(one_task)(xs, ys, xs_val, ys_val)  # [tasks]: every task adapted at once
meta_grads = torch.autograd.grad(outer.sum(), [*theta0.values(), log_lr, logit_beta])

# The same meta-gradient from a Python loop over the tasks.
looped = sum(one_task(xs[i], ys[i], xs_val[i], ys_val[i]) for i in range(tasks))
for g_vmap, g_loop in zip(meta_grads, torch.autograd.grad(looped, [*theta0.values(), log_lr, logit_beta]), strict=True):
    torch.testing.assert_close(g_vmap, g_loop, rtol=1e-4, atol=1e-6)

# metaopt's `func` engine runs the same inner loop, described once, vmapped over the tasks by adapt_tasks.
meta = metaopt.MetaParameters(lr=0.1, beta=0.5, learn=("lr", "beta"))  # the values of exp(log_lr), sigmoid(0)
inner = metaopt.InnerLoop(lambda p, batch, state: inner_loss(p, *batch, state), steps=inner_steps,
                          popart=metaopt.PopArtSpec("2.weight", "2.bias", targets=lambda p, batch, state: batch[1],
                                                    debias=False, first_pop=True))  # as the loop above
fresh = popart.init_tasks(tasks)  # per-task statistics, [tasks, 1]
res = metaopt.adapt_tasks(model, inner, (xs, ys), meta, engine="func", popart_state=fresh)
engine = metaopt.map_tasks(lambda p, s, x, y: outer_loss(p, x, y, popart.PopArtState(*s)), res.params,
                           tuple(res.popart_state), xs_val, ys_val)
engine_grads = torch.autograd.grad(engine.sum(), [*theta0.values(), meta.log_lr, meta.logit_beta])
for g_vmap, g_engine in zip(meta_grads, engine_grads, strict=True):
    torch.testing.assert_close(g_vmap, g_engine, rtol=1e-4, atol=1e-6)
print(f"outer loss {outer.sum().item():.4f}; dL/dlog_lr {meta_grads[-2].item():+.4g}, "
      f"dL/dlogit_beta {meta_grads[-1].item():+.4g} (vmap == loop == metaopt.adapt_tasks)")
