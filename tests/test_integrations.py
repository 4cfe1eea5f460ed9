"""POP helpers for hand-written higher / TorchOpt inner loops agree with the engines' meta-gradients."""

from __future__ import annotations

import higher
import pytest
import torch
import torchopt
from _toy import make_inner, make_model, make_tasks, outer_loss
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import adapt
from metaopt.integrations import fast_param_names, pop_fmodel_, pop_module_
from metaopt.meta_params import MetaParameters
from metaopt.verify import relative_error

STEPS, LR, BETA = 3, 0.05, 0.3


def _inner_loss(model, params, batch, state):
    pred = functional_call(model, params, (batch["x"],))
    return 0.5 * ((pred - pa.normalize(state, batch["y"])) ** 2).mean()


def _engine_grads(model, inb, outb, beta):
    meta = MetaParameters(lr=LR, beta=BETA, dtype=torch.float64)
    meta.logit_beta = beta  # the same leaf as the hand-written loops
    res = adapt(model, make_inner(model, steps=STEPS), inb, meta, engine="func", popart_state=pa.init(1, like=beta))
    loss = outer_loss(model, res.params, outb, res.popart_state)
    return torch.autograd.grad(loss, [*model.parameters(), beta])


def _torchopt_grads(model, inb, outb, logit_beta):
    beta = torch.sigmoid(logit_beta)
    saved = torchopt.extract_state_dict(model, by="reference")
    opt = torchopt.MetaSGD(model, lr=LR)
    state = pa.init(1, like=logit_beta)
    for _ in range(STEPS):
        new = pa.art(state, inb["y"], beta)
        pop_module_(model, "value.weight", "value.bias", state, new)  # the one line
        state = new
        opt.step(_inner_loss(model, dict(model.named_parameters()), inb, state))
    loss = outer_loss(model, dict(model.named_parameters()), outb, state)
    torchopt.recover_state_dict(model, saved)
    return torch.autograd.grad(loss, [*model.parameters(), logit_beta])


def _higher_grads(model, inb, outb, logit_beta):
    beta = torch.sigmoid(logit_beta)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    state = pa.init(1, like=logit_beta)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(STEPS):
            new = pa.art(state, inb["y"], beta)
            pop_fmodel_(fmodel, "value.weight", "value.bias", state, new)  # the one line
            state = new
            diffopt.step(0.5 * ((fmodel(inb["x"]) - pa.normalize(state, inb["y"])) ** 2).mean())
        loss = 0.5 * ((pa.unnormalize(state, fmodel(outb["x"])) - outb["y"]) ** 2).mean()
    return torch.autograd.grad(loss, [*model.parameters(), logit_beta])


@pytest.mark.parametrize("loop", [_torchopt_grads, _higher_grads], ids=["torchopt", "higher"])
def test_hand_written_loop_with_pop_helper_equals_the_engine(loop):
    tasks = make_tasks(1)
    inb, outb = {"x": tasks["x"][0, 0], "y": tasks["y"][0, 0]}, {"x": tasks["x"][0, 1], "y": tasks["y"][0, 1]}
    logit_beta = torch.tensor(BETA, dtype=torch.float64).logit().requires_grad_()
    got = loop(make_model(), inb, outb, logit_beta)
    ref = _engine_grads(make_model(), inb, outb, torch.nn.Parameter(logit_beta.detach().clone()))
    assert float(got[-1].abs()) > 0
    for a, b in zip(got, ref, strict=True):
        assert relative_error(a, b) <= 1e-10


def test_pop_helpers_preserve_outputs_and_name_bad_slots():
    model = make_model()
    x = make_tasks(1)["x"][0, 0]
    old, new = pa.init(1, dtype=torch.float64), pa.art(pa.init(1, dtype=torch.float64), 50 + 10 * x[:, 0], 0.5)
    before = model(x).detach()
    pop_module_(model, "value.weight", "value.bias", old, new)
    assert relative_error(pa.unnormalize(new, model(x)), before) <= 1e-12
    with pytest.raises(ValueError, match=r"weight='head.weight' is not a parameter slot of the module; expected"):
        pop_module_(model, "head.weight", "value.bias", old, new)
    other = make_model()
    with higher.innerloop_ctx(other, torch.optim.SGD(other.parameters(), lr=0.1)) as (fmodel, _):
        assert fast_param_names(fmodel) == [n for n, _ in make_model().named_parameters()]
        with pytest.raises(ValueError, match="bias='value.b' is not one of the fast weights"):
            pop_fmodel_(fmodel, "value.weight", "value.b", old, new)
    with pytest.raises(TypeError, match="fmodel must be a higher patched module"):
        pop_fmodel_(model, "value.weight", "value.bias", old, new)


class _Tied(torch.nn.Module):
    """Two layers sharing one weight (``b.weight is a.weight``) and a value head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.value = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
        self.b.weight = self.a.weight
        self.double()

    def forward(self, x):
        return self.value(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_pop_fmodel_rescales_the_head_of_a_model_with_tied_weights():
    model = _Tied()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    old, new = pa.init(1, dtype=torch.float64), pa.art(pa.init(1, dtype=torch.float64), 50 + 10 * x[:, 0], 0.5)
    with higher.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=0.1)) as (fmodel, _):
        names = fast_param_names(fmodel)
        assert len(names) == len(fmodel.fast_params) == 5 and "b.weight" not in names  # one slot per tensor
        before = fmodel(x).detach()
        w, b = pop_fmodel_(fmodel, "value.weight", "value.bias", old, new)
        assert w.shape == (1, 3) and b.shape == (1,)
        assert relative_error(pa.unnormalize(new, fmodel(x)), before) <= 1e-12
