"""The inner-loop driver: per-step batches, task batching on every engine, checked mode, validation."""

from __future__ import annotations

import pytest
import torch
from _toy import make_inner, make_model, make_tasks, outer_loss
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import ENGINES, InnerLoop, NonFiniteTaskError, PopArtSpec, adapt, adapt_tasks, map_tasks, per_step
from metaopt.inner_optim import InnerOptimizer, adam, sgd
from metaopt.meta_params import MetaParameters
from metaopt.verify import check_gradients, relative_error

STEPS = 3


def _stacked_states(n):
    return pa.PopArtState(*(t.expand(n, 1).clone() for t in pa.init(1, dtype=torch.float64)))


def _resampling_source(model, tasks, t):
    """Batch k = task t's inputs shifted by k, targets plus a differentiable bootstrap of the current weights."""

    def fn(k, params):
        x = tasks["x"][t, 0] + 0.1 * k
        return {"x": x, "y": tasks["y"][t, 0] + 0.2 * functional_call(model, params, (x.flip(0),))}

    return per_step(fn)


@pytest.mark.parametrize("engine", ENGINES)
def test_resampling_inner_loop_matches_finite_differences(engine):
    # A new batch at every step, deterministic and differentiable in the fast weights: the meta-gradient must be
    # the total derivative of the whole unroll, which central differences of the outer loss measure.
    model, tasks = make_model(), make_tasks(2)
    meta = MetaParameters(lr=0.05, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    inner = make_inner(model, steps=STEPS, momentum=0.5)

    def objective():
        total = 0.0
        for t in range(2):
            r = adapt(model, inner, _resampling_source(model, tasks, t), meta, engine=engine,
                      popart_state=pa.init(1, dtype=torch.float64))
            total = total + outer_loss(model, r.params, {"x": tasks["x"][t, 1], "y": tasks["y"][t, 1]},
                                       r.popart_state)
        return total

    inputs = dict(model.named_parameters()) | {"log_lr": meta.log_lr, "logit_beta": meta.logit_beta}
    report = check_gradients(objective, inputs, eps=1e-5, rtol=1e-6)
    assert report.passed, report.table()


def test_resampling_sees_the_current_weights():
    model, tasks = make_model(), make_tasks(1)
    meta = MetaParameters(lr=0.05, dtype=torch.float64)
    seen = []

    def fn(k, params):
        seen.append((k, params["value.bias"].detach().clone()))
        return {"x": tasks["x"][0, 0], "y": tasks["y"][0, 0]}

    res = adapt(model, make_inner(model, popart=False, steps=STEPS), per_step(fn), meta)
    assert [k for k, _ in seen] == list(range(STEPS))
    assert torch.equal(seen[0][1], model.value.bias.detach())
    assert not torch.equal(seen[1][1], seen[0][1])  # step 1 saw the weights after step 0
    assert not torch.equal(res.params["value.bias"], seen[-1][1])


@pytest.mark.parametrize("engine", ["higher", "torchopt"])
@pytest.mark.parametrize("resample", [False, True])
def test_task_loop_equals_vmap(engine, resample):
    model, tasks = make_model(), make_tasks(3)
    meta = MetaParameters(lr=0.05, beta=0.3, learn=("lr", "beta"), dtype=torch.float64)
    inner = make_inner(model, steps=STEPS, momentum=0.9, weight_targets=True)
    batches = {"x": tasks["x"][:, 0], "y": tasks["y"][:, 0]}
    if resample:
        def fn(k, params):  # params stacked over tasks
            x = batches["x"] + 0.1 * k
            v = torch.func.vmap(lambda p, xi: functional_call(model, p, (xi,)))(params, x)
            return {"x": x, "y": batches["y"] + 0.2 * v}

        source = per_step(fn)
    else:
        source = batches
    outer_b = {"x": tasks["x"][:, 1], "y": tasks["y"][:, 1]}
    ps = list(model.parameters()) + [meta.log_lr, meta.logit_beta]

    def grads(eng):
        res = adapt_tasks(model, inner, source, meta, engine=eng, popart_state=_stacked_states(3), num_tasks=3)
        losses = map_tasks(lambda p, s, b: outer_loss(model, p, b, pa.PopArtState(*s)), res.params,
                           tuple(res.popart_state), outer_b, engine=eng)
        return torch.autograd.grad(losses.sum(), ps)

    for a, b in zip(grads(engine), grads("func"), strict=True):
        assert relative_error(a, b) <= 1e-10


@pytest.mark.parametrize("engine", ENGINES)
def test_checked_mode_names_the_task(engine):
    model, tasks = make_model(), make_tasks(3)
    meta = MetaParameters(lr=0.05, beta=0.3, dtype=torch.float64)
    inner = make_inner(model, steps=2)
    y = tasks["y"][:, 0].clone()
    y[1, 2] = float("nan")
    batches = {"x": tasks["x"][:, 0], "y": y}
    with pytest.raises(NonFiniteTaskError, match=r"task\(s\) \[1\]") as err:
        adapt_tasks(model, inner, batches, meta, engine=engine, popart_state=_stacked_states(3))
    assert err.value.tasks == [1]
    # Unchecked: the bad task comes back NaN, the others are exactly what they would be alone.
    res = adapt_tasks(model, inner, batches, meta, engine=engine, popart_state=_stacked_states(3), check=False)
    assert torch.isnan(res.params["value.bias"][1]).all()
    alone = adapt(model, inner, {"x": tasks["x"][2, 0], "y": y[2]}, meta, engine=engine,
                  popart_state=pa.init(1, dtype=torch.float64))
    for n, p in alone.params.items():
        assert relative_error(res.params[n][2], p) <= 1e-12


def test_checked_mode_catches_sigma_and_weights():
    model, tasks = make_model(), make_tasks(2)
    meta = MetaParameters(lr=1e200, dtype=torch.float64)  # the step overflows in task space
    inner = make_inner(model, popart=False, steps=2)
    with pytest.raises(NonFiniteTaskError, match="params"):
        adapt_tasks(model, inner, {"x": tasks["x"][:, 0], "y": tasks["y"][:, 0]}, meta)


def test_num_tasks_is_needed_without_stacked_data():
    model = make_model()
    inner = make_inner(model, popart=False)
    with pytest.raises(ValueError, match="num_tasks must be given"):
        adapt_tasks(model, inner, per_step(lambda k, p: None), MetaParameters(dtype=torch.float64))
    with pytest.raises(ValueError, match="same number of tasks"):
        adapt_tasks(model, inner, {"x": torch.zeros(2, 4, 3), "y": torch.zeros(3, 4)},
                    MetaParameters(dtype=torch.float64))


def test_optimizer_factories_validate_at_construction():
    assert sgd(0.9) == InnerOptimizer("sgd", momentum=0.9)
    assert adam(eps=1e-6).eps == 1e-6
    with pytest.raises(ValueError, match=r"optimizer kind must be one of \('sgd', 'adam'\), got 'sgdd'"):
        InnerOptimizer("sgdd")  # used to run Adam silently
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got 1.0"):
        sgd(1.0)
    with pytest.raises(ValueError, match=r"betas\[0\] must be a number in \[0, 1\), got 1.0"):
        adam(betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1"):
        adam(eps=-1)
    with pytest.raises(ValueError, match="Adam's hyperparameters; with kind='sgd'"):
        InnerOptimizer("sgd", eps=1e-3)
    with pytest.raises(ValueError, match="momentum is SGD's hyperparameter"):
        InnerOptimizer("adam", momentum=0.5)


def test_inner_loop_and_popart_spec_validate_at_construction():
    def loss(p, b, s):
        return 0
    with pytest.raises(ValueError, match="steps must be an int >= 1, got True"):
        InnerLoop(loss, steps=True)
    with pytest.raises(TypeError, match="first_order must be True or False, got int 1"):
        InnerLoop(loss, first_order=1)
    with pytest.raises(TypeError, match="optimizer must be an InnerOptimizer"):
        InnerLoop(loss, optimizer="adam")
    with pytest.raises(TypeError, match="weight must be a parameter name"):
        PopArtSpec(3, "b", targets=loss)
    with pytest.raises(ValueError, match="sigma_max must be a finite number > 1"):
        PopArtSpec("w", "b", targets=loss, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="engine must be one of"):
        adapt_tasks(make_model(), InnerLoop(loss), {"x": torch.zeros(2, 1)}, MetaParameters(), engine="jax")


def test_params_must_match_the_model():
    model = make_model()
    with pytest.raises(ValueError, match="params must name exactly the model's parameters"):
        adapt(model, make_inner(model, popart=False), None, MetaParameters(dtype=torch.float64),
              params={"value.weight": model.value.weight})


@pytest.mark.parametrize("engine", ["higher", "torchopt"])
@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_every_task_failing_gives_nan_not_an_exception_unchecked(engine, kind):
    # A distributed rank must reach the shared checks even when all its tasks fail (no rank may raise alone).
    model, tasks = make_model(), make_tasks(2)
    meta = MetaParameters(lr=0.05, beta=0.3, dtype=torch.float64)
    opt = {"kind": "adam"} if kind == "adam" else {"momentum": 0.9 if kind == "momentum" else 0.0}
    inner = make_inner(model, steps=2, **opt)
    batches = {"x": tasks["x"][:, 0], "y": torch.full_like(tasks["y"][:, 0], float("nan"))}
    res = adapt_tasks(model, inner, batches, meta, engine=engine, popart_state=_stacked_states(2), check=False)
    assert all(torch.isnan(p).all() for p in res.params.values())
    with pytest.raises(NonFiniteTaskError, match=r"task\(s\) \[0, 1\]"):
        adapt_tasks(model, inner, batches, meta, engine=engine, popart_state=_stacked_states(2))
