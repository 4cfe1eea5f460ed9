"""Online meta-gradients (metaopt.online): checked against finite differences and a plain autograd unroll.

The reference below (``_plain_update``) is written independently of the engines: ART and POP from
``metaopt.popart``, the inner gradient by ``torch.autograd.grad``, a hand-written SGD step.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import ENGINES, InnerLoop, PopArtSpec
from metaopt.inner_optim import adam, sgd
from metaopt.meta_params import MetaParameters
from metaopt.online import OnlineMetaLearner, art_sensitivity, scaled_error

D = torch.float64


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().double()


def _batches(n: int, seed: int = 3, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Targets whose scale jumps every 4 batches (non-stationary), in real units up to ~1e2."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g, dtype=D)
    out = []
    for t in range(n):
        x = torch.randn(size, 3, generator=g, dtype=D)
        scale = [1.0, 30.0, 3.0, 100.0][(t // 4) % 4]
        out.append((x, scale * (x @ w + 0.5 * torch.randn(size, generator=g, dtype=D)) + scale))
    return out


def _problem(model: Net, scale: float | None = 10.0):
    """The inner loss, a meta-loss in real units over a scale (a constant: finite differences of the objective
    are its gradient; ``None``: over sg(sigma), whose value moves with beta) and the PopArt spec."""

    def inner_loss(p, batch, s):
        n = functional_call(model, p, (batch[0],))
        return 0.5 * ((n - pa.normalize(s, batch[1])) ** 2).mean()

    def meta_loss(p, batch, s):
        pred = pa.unnormalize(s, functional_call(model, p, (batch[0],)))
        return scaled_error(pred, batch[1], s.sigma if scale is None else scale).mean()

    spec = PopArtSpec("head.weight", "head.bias", targets=lambda p, batch, s: batch[1], debias=False,
                      first_pop=True)
    return inner_loss, meta_loss, spec


def _learner(model, k, *, lr=0.05, beta=0.2, engine="func", carry=True, optimizer=None, meta_opt_lr=0.0,
             learn=("lr", "beta"), meta_loss=None, scale=10.0):
    inner_loss, default_meta, spec = _problem(model, scale)
    inner = InnerLoop(inner_loss, steps=k, popart=spec, optimizer=optimizer or sgd())
    meta = MetaParameters(lr=lr, beta=beta, learn=learn, dtype=D)
    return OnlineMetaLearner(model, inner, meta, meta_loss or default_meta, engine=engine, carry=carry,
                             popart_state=pa.init(1, dtype=D),
                             meta_optimizer=lambda ps: torch.optim.SGD(ps, lr=meta_opt_lr))


# --------------------------------------------------------------------------------- independent reference
def _plain_update(model, p, s, batch, lr, beta):
    """ART, POP, then SGD on the normalized loss with the new statistics held constant (create_graph)."""
    new = pa.art(s, batch[1], beta)
    p = dict(p)
    p["head.weight"], p["head.bias"] = pa.pop(p["head.weight"], p["head.bias"], s, new)
    leaves = {n: v if v.requires_grad else v.detach().requires_grad_() for n, v in p.items()}
    n = functional_call(model, leaves, (batch[0],))
    loss = 0.5 * ((n - pa.normalize(new, batch[1])) ** 2).mean()  # the statistics enter as they are
    grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
    return {k: v - lr * g for (k, v), g in zip(leaves.items(), grads, strict=True)}, new


def _meta(model, p, s, batch):
    return _problem(model)[1](p, batch, s)


def _k_step_objective(model, batches, s0, k, lr0, beta0, lr, beta, *, carry=True):
    """The k-step objective of window [s0, s0 + k): lifetime statistics recomputed with ``beta`` (carry), the
    network's unnormalized weights at s0 from the run with (lr0, beta0), k updates with (lr, beta), meta-loss on
    batch s0 + k."""
    p = {n: v.detach() for n, v in model.named_parameters()}
    s = pa.init(1, dtype=D)
    for t in range(s0):
        p, s = _plain_update(model, p, s, batches[t], lr0, beta0)
        p = {n: v.detach() for n, v in p.items()}
        s = pa.PopArtState(*(x.detach() for x in s))
    if carry:
        s_new = pa.init(1, dtype=D)
        for t in range(s0):
            s_new = pa.art(s_new, batches[t][1], beta)
        w_tilde, b_tilde = s.sigma[:, None] * p["head.weight"], s.sigma * p["head.bias"] + s.mu
        p = dict(p)
        p["head.weight"], p["head.bias"] = w_tilde / s_new.sigma[:, None], (b_tilde - s_new.mu) / s_new.sigma
        s = s_new
    for t in range(s0, s0 + k):
        p, s = _plain_update(model, p, s, batches[t], lr, beta)
    return _meta(model, p, s, batches[s0 + k])


def _fd(f, x, eps=1e-5):
    return (f(x + eps) - f(x - eps)) / (2 * eps)


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("carry", [True, False])
def test_truncated_meta_gradient_matches_finite_differences_of_the_k_step_objective(engine, carry):
    model, k, s0, lr0, beta0 = _net(), 3, 3, 0.05, 0.2
    batches = _batches(s0 + k + 1)
    learner = _learner(model, k, lr=lr0, beta=beta0, engine=engine, carry=carry)
    infos = [learner.step(b) for b in batches]
    learner.close()
    got = infos[s0 + k].meta_grad
    assert got is not None and infos[s0 + k].meta_loss is not None
    assert [i.meta_grad is not None for i in infos] == [t in (3, 6) for t in range(s0 + k + 1)]

    log_lr0, logit0 = math.log(lr0), math.log(beta0 / (1 - beta0))

    def j(log_lr, logit):
        lr, beta = torch.tensor(log_lr, dtype=D).exp(), torch.sigmoid(torch.tensor(logit, dtype=D))
        with torch.enable_grad():
            return float(_k_step_objective(model, batches, s0, k, lr0, beta0, lr, beta, carry=carry))

    assert float(infos[s0 + k].meta_loss) == pytest.approx(j(log_lr0, logit0), rel=1e-12)
    fd_lr = _fd(lambda x: j(x, logit0), log_lr0)
    fd_beta = _fd(lambda x: j(log_lr0, x), logit0)
    assert abs(fd_beta) > 1e-4 and abs(fd_lr) > 1e-4  # both directions matter here
    assert float(got["log_lr"]) == pytest.approx(fd_lr, rel=1e-6, abs=1e-8)
    assert float(got["logit_beta"]) == pytest.approx(fd_beta, rel=1e-6, abs=1e-8)


def test_carried_sensitivity_changes_the_beta_gradient():
    """The statistics' whole-lifetime sensitivity is not a negligible term (the FD test checks both values)."""
    grads = {}
    for carry in (True, False):
        model = _net()
        learner = _learner(model, 3, carry=carry)
        infos = [learner.step(b) for b in _batches(10)]
        grads[carry] = float(infos[9].meta_grad["logit_beta"])
    assert abs(grads[True] - grads[False]) > 0.1 * abs(grads[False])


@pytest.mark.parametrize("debias", [False, True])
def test_art_sensitivity_matches_finite_differences_over_a_lifetime(debias):
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 1e3, 0.1, 50.0], dtype=D)
    ys = [scales[(t // 50) % 4] * (1 + torch.randn(1, generator=g, dtype=D)) for t in range(200)]
    beta0 = 0.05

    def run(beta):
        s = pa.init(1, dtype=D)
        for y in ys:
            s = pa.art(s, y, torch.tensor(beta, dtype=D), debias=debias)
        return s

    s = pa.init(1, dtype=D)
    tangent = (torch.zeros(1, dtype=D), torch.zeros(1, dtype=D))
    for y in ys:
        s, tangent = art_sensitivity(s, tangent, y, torch.tensor(beta0, dtype=D), debias=debias)
    ref = run(beta0)
    assert torch.allclose(s.mu, ref.mu, rtol=1e-13) and torch.allclose(s.sigma, ref.sigma, rtol=1e-13)
    eps = 1e-7
    hi, lo = run(beta0 + eps), run(beta0 - eps)
    fd_mu, fd_sigma = (hi.mu - lo.mu) / (2 * eps), (hi.sigma - lo.sigma) / (2 * eps)
    assert fd_sigma.abs().item() > 1.0  # a real sensitivity, not ~0
    torch.testing.assert_close(tangent[0], fd_mu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tangent[1], fd_sigma, rtol=1e-6, atol=1e-6)


def test_art_sensitivity_one_step_closed_form():
    """d mu'/d beta = (1 - beta) dmu + d and the sigma formula of the docstring, at one step."""
    s = pa.PopArtState(torch.tensor([2.0], dtype=D), torch.tensor([3.0], dtype=D), torch.tensor([5.0], dtype=D))
    dmu, dsig, beta, y = torch.tensor([0.7], dtype=D), torch.tensor([-1.1], dtype=D), 0.3, torch.tensor([9.0], dtype=D)
    new, (tmu, tsig) = art_sensitivity(s, (dmu, dsig), y, torch.tensor(beta, dtype=D))
    d = 9.0 - 2.0
    assert float(tmu) == pytest.approx((1 - beta) * 0.7 + d, rel=1e-14)
    rhs = -(9.0 + beta * d * d) + (1 - beta) * (2 * 3.0 * -1.1 + d * d - 2 * beta * d * 0.7)
    assert float(tsig) == pytest.approx(rhs / (2 * float(new.sigma)), rel=1e-13)


@pytest.mark.parametrize("engine", ENGINES)
def test_window_of_the_whole_lifetime_gives_the_full_gradient(engine):
    model, T, lr0, beta0 = _net(1), 6, 0.05, 0.3
    batches = _batches(T + 1, seed=5)
    learner = _learner(model, T, lr=lr0, beta=beta0, engine=engine)
    infos = [learner.step(b) for b in batches]
    learner.close()  # torchopt keeps the fast weights in the module while a window is open
    got = infos[T].meta_grad
    log_lr = torch.tensor(math.log(lr0), dtype=D, requires_grad=True)
    logit = torch.tensor(math.log(beta0 / (1 - beta0)), dtype=D, requires_grad=True)
    p = {n: v.detach() for n, v in model.named_parameters()}
    s = pa.init(1, dtype=D)
    for t in range(T):
        p, s = _plain_update(model, p, s, batches[t], log_lr.exp(), torch.sigmoid(logit))
    full = torch.autograd.grad(_meta(model, p, s, batches[T]), [log_lr, logit])
    assert float(got["log_lr"]) == pytest.approx(float(full[0]), rel=1e-9)
    assert float(got["logit_beta"]) == pytest.approx(float(full[1]), rel=1e-9)


@pytest.mark.parametrize("carry", [True, False])
def test_sigma_inflation_guard_no_inner_learning_gives_zero_beta_gradient(carry):
    """lr -> 0: POP preserves every prediction, so a real-units meta-loss gives beta no gradient; a meta-loss
    in normalized units (the gameable one) does."""
    model = _net(2)
    batches = _batches(13, seed=7)
    learner = _learner(model, 3, lr=1e-30, beta=0.2, carry=carry, learn=("beta",), scale=None)
    zero = [i.meta_grad["logit_beta"] for i in (learner.step(b) for b in batches) if i.meta_grad is not None]

    def gameable(p, batch, s):
        n = functional_call(model, p, (batch[0],))
        return 0.5 * ((n - pa.normalize(s, batch[1])) ** 2).mean()

    learner = _learner(model, 3, lr=1e-30, beta=0.2, carry=carry, learn=("beta",), meta_loss=gameable)
    game = [i.meta_grad["logit_beta"] for i in (learner.step(b) for b in batches) if i.meta_grad is not None]
    assert len(zero) == len(game) == 4
    for z, gm in zip(zero, game, strict=True):
        assert abs(float(gm)) > 1e-5
        assert abs(float(z)) <= 1e-12 * abs(float(gm))


def test_hypergradient_descent_k1_without_popart():
    """k = 1, SGD: dL(theta_{t+1})/d log lr = -lr * grad L_{t+1}(theta_{t+1}) . grad L_t(theta_t) (Baydin et al.)."""
    model = _net(4)
    batches = _batches(3, seed=9)

    def loss(p, batch, s):
        return 0.5 * ((functional_call(model, p, (batch[0],)) - batch[1] / 10) ** 2).mean()

    lr = 0.03
    learner = OnlineMetaLearner(model, InnerLoop(loss, steps=1), MetaParameters(lr=lr, learn=("lr",), dtype=D),
                                loss, meta_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0))
    infos = [learner.step(b) for b in batches]
    p0 = {n: v.detach().requires_grad_() for n, v in model.named_parameters()}
    g0 = torch.autograd.grad(loss(p0, batches[0], None), list(p0.values()))
    p1 = {n: (v - lr * g).detach().requires_grad_() for (n, v), g in zip(p0.items(), g0, strict=True)}
    g1 = torch.autograd.grad(loss(p1, batches[1], None), list(p1.values()))
    expected = -lr * sum(float((a * b).sum()) for a, b in zip(g0, g1, strict=True))
    assert float(infos[1].meta_grad["log_lr"]) == pytest.approx(expected, rel=1e-10)


def _run_engine(engine, steps=14):
    model = _net(6)
    learner = _learner(model, 3, lr=0.01, beta=0.1, engine=engine, optimizer=adam(), meta_opt_lr=0.0)
    learner.meta_opt = torch.optim.Adam(list(learner.learned.values()), lr=3e-2)
    infos = [learner.step(b) for b in _batches(steps, seed=11)]
    learner.close()
    grads = torch.stack([torch.stack(list(i.meta_grad.values())) for i in infos if i.meta_grad is not None])
    return learner, grads


def test_engines_agree_with_adam_state_persisting_and_meta_steps():
    ref, ref_grads = _run_engine("func")
    assert ref.opt_state.nu, "Adam's state persists across windows"
    assert float(ref.values()["beta"]) != pytest.approx(0.1, rel=1e-3)  # the meta-optimizer moved beta
    for engine in ("higher", "torchopt"):
        other, grads = _run_engine(engine)
        torch.testing.assert_close(grads, ref_grads, rtol=1e-8, atol=1e-12)
        for n in ref.params:
            torch.testing.assert_close(other.params[n], ref.params[n], rtol=1e-8, atol=1e-12)
        for key in ("lr", "beta"):
            torch.testing.assert_close(other.values()[key], ref.values()[key], rtol=1e-8, atol=0.0)


def test_population_equals_independent_learners():
    """learners=S (vmap) gives each learner exactly what it gets alone, with its own lr and beta."""
    S, k, steps = 3, 2, 9
    data = [_batches(steps, seed=20 + i) for i in range(S)]
    singles = []
    for i in range(S):
        model = _net(0)
        learner = _learner(model, k, meta_opt_lr=0.0)
        learner.meta_opt = torch.optim.Adam(list(learner.learned.values()), lr=5e-2)
        for b in data[i]:
            learner.step(b)
        singles.append(learner.values())
    model = _net(0)
    inner_loss, meta_loss, spec = _problem(model)
    pop = OnlineMetaLearner(model, InnerLoop(inner_loss, steps=k, popart=spec),
                            MetaParameters(lr=0.05, beta=0.2, learn=("lr", "beta"), dtype=D), meta_loss,
                            popart_state=pa.init(S, dtype=D).__class__(*(t.reshape(S, 1) for t in pa.init(S, dtype=D))),
                            learners=S, meta_lr=5e-2)
    for t in range(steps):
        pop.step(tuple(torch.stack([data[i][t][j] for i in range(S)]) for j in range(2)))
    values = pop.values()
    assert values["beta"].shape == (S,)
    for i in range(S):
        for key in ("lr", "beta"):
            assert float(values[key][i]) == pytest.approx(float(singles[i][key]), rel=1e-10)
    assert len({round(float(v), 8) for v in values["beta"]}) == S  # the learners differ


def test_scaled_error_values_and_stop_gradient():
    pred = torch.tensor([1.0, 10.0], dtype=D, requires_grad=True)
    scale = torch.tensor(2.0, dtype=D, requires_grad=True)
    sq = scaled_error(pred, torch.zeros(2, dtype=D), scale)
    torch.testing.assert_close(sq, torch.tensor([0.125, 12.5], dtype=D))
    hub = scaled_error(pred, torch.zeros(2, dtype=D), scale, huber=1.0)
    torch.testing.assert_close(hub, torch.tensor([0.125, 4.5], dtype=D))
    hub.sum().backward()
    assert scale.grad is None


def test_bad_arguments_name_the_argument():
    model = _net()
    inner_loss, meta_loss, spec = _problem(model)
    meta = MetaParameters(lr=0.1, beta=0.1, learn=("beta",), dtype=D)
    with pytest.raises(ValueError, match="inner.truncate"):
        OnlineMetaLearner(model, InnerLoop(inner_loss, steps=3, truncate=1, popart=spec), meta, meta_loss,
                          popart_state=pa.init(1, dtype=D))
    with pytest.raises(ValueError, match="engine must be 'func'"):
        OnlineMetaLearner(model, InnerLoop(inner_loss, popart=spec), meta, meta_loss,
                          popart_state=pa.init(1, dtype=D), learners=2, engine="higher")
    with pytest.raises(ValueError, match="popart_state"):
        OnlineMetaLearner(model, InnerLoop(inner_loss, popart=spec), meta, meta_loss)
    with pytest.raises(ValueError, match="per_parameter"):
        OnlineMetaLearner(model, InnerLoop(inner_loss, popart=spec),
                          MetaParameters(lr=0.1, per_parameter=["head.bias"], dtype=D), meta_loss,
                          popart_state=pa.init(1, dtype=D))
    with pytest.raises(ValueError, match="huber"):
        scaled_error(torch.zeros(1), torch.zeros(1), 1.0, huber=-1.0)


# ------------------------------------------------------------------------- Fig. 1a learned online (CLI)
def test_fig1a_online_with_zero_meta_lr_reproduces_the_fixed_run():
    """meta-lr 0: the online learner (engines' step, vmap over seeds) takes exactly the hand-written fixed updates."""
    from metaopt.experiments import popart_regression as pr

    kw = {"dtype": "float64", "seed": 4, "beta": 0.05, "lr": 10**-2.5}
    fixed = pr.run_experiment(3, 120, "popart", **kw)
    online = pr.run_experiment(3, 120, "popart", learn="beta,lr", meta_lr=0.0, truncation=7, **kw)
    torch.testing.assert_close(online.squared_errors["popart"], fixed.squared_errors["popart"], rtol=1e-9, atol=1e-9)
    assert online.hyper["popart"]["beta"].shape == (3, 120)
    torch.testing.assert_close(online.hyper["popart"]["beta"], torch.full((3, 120), 0.05, dtype=D))
    moved = pr.run_experiment(3, 120, "popart", learn="beta,lr", truncation=7, **kw)
    assert (moved.hyper["popart"]["lr"][:, -1] != 10**-2.5).all()  # the meta-optimizer does step them
    torch.testing.assert_close(moved.hyper["popart"]["beta"][:, :7], torch.full((3, 7), 0.05, dtype=D))  # window 1
    assert (moved.hyper["popart"]["beta"][:, 7] - 0.05).abs().min() > 1e-4  # ... then they move


def test_rmse_inliers_leaves_out_the_outlier_positions():
    from metaopt.experiments import popart_regression as pr

    res = pr.run_experiment(2, 2100, "sgd", seed=1)
    sq = torch.full((2, 2100), 4.0, dtype=D)
    sq[:, [1000, 2000]] = 1e10
    sq[1] = 9.0
    sq[1, [1000, 2000]] = 1e10
    fake = pr.Results(2, 2100, 1, 10, "float64", res.specs, res.outliers, {"sgd": sq}, res.curves)
    q = fake.rmse_inliers("sgd")
    assert q["median"] == pytest.approx(2.5) and q["p10"] == pytest.approx(2.1) and q["p90"] == pytest.approx(2.9)
    diverged = torch.cat([sq, torch.full((1, 2100), float("nan"), dtype=D)])  # a third seed went NaN
    fake = pr.Results(3, 2100, 1, 10, "float64", res.specs, res.outliers, {"sgd": diverged}, res.curves)
    q = fake.rmse_inliers("sgd")
    assert q["median"] == pytest.approx(3.0) and q["p10"] == pytest.approx(2.2) and q["p90"] == math.inf


def test_cli_learn_writes_rmse_inliers_and_learned_values(tmp_path, capsys, monkeypatch):
    import json

    from metaopt import cli

    monkeypatch.setattr(cli, "SUBCOMMANDS", {"popart-regression": cli.SUBCOMMANDS["popart-regression"]})
    out = tmp_path / "learn"
    argv = ["popart-regression", "--seeds", "2", "--steps", "40", "--methods", "sgd,popart", "--learn", "beta,lr",
            "--beta", "0.001", "--lr", "0.0003", "--truncation", "5", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    pop, sgd_ = summary["methods"]["popart"], summary["methods"]["sgd"]
    assert pop["learned"] and not sgd_["learned"]
    assert pop["initial_beta"] == 0.001 and pop["initial_lr"] == 0.0003
    assert pop["beta"] != 0.001 and pop["lr"] != 0.0003 and sgd_["lr"] == 10**-3.5
    assert pop["rmse_inliers"] > 0 and summary["online"]["truncation"] == 5
    assert (out / "fig1a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "popart learns beta,lr online" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--learn", "gamma"], "--learn"),
        (["--methods", "sgd", "--learn", "beta"], "does not run popart"),
        (["--beta", "1.5"], "--beta"),
        (["--lr", "0"], "--lr"),
        (["--learn", "lr", "--truncation", "0"], "--truncation"),
        (["--learn", "lr", "--huber", "-1"], "--huber"),
        (["--meta-scale", "mad"], "--meta-scale"),
    ],
)
def test_cli_learn_rejects_bad_input_without_writing(tmp_path, capsys, monkeypatch, argv, message):
    from metaopt import cli

    monkeypatch.setattr(cli, "SUBCOMMANDS", {"popart-regression": cli.SUBCOMMANDS["popart-regression"]})
    out = tmp_path / "never"
    try:
        code = cli.main(["popart-regression", *argv, "--out", str(out)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()


# ------------------------------------------------------------------------------- forward mode (RTRL)
@pytest.mark.parametrize("optimizer", [sgd(), adam()], ids=["sgd", "adam"])
def test_forward_mode_equals_the_full_gradient_at_every_window(optimizer):
    """mode='forward', k = 3: the meta-gradient at t = 3, 6, 9 equals backpropagation through all t updates."""
    batches = _batches(10, seed=13)
    fwd = _learner(_net(8), 3, lr=0.02, beta=0.2, optimizer=optimizer)
    fwd = OnlineMetaLearner(fwd.model, fwd.inner, MetaParameters(lr=0.02, beta=0.2, learn=("lr", "beta"), dtype=D),
                            fwd.meta_loss, popart_state=pa.init(1, dtype=D), mode="forward",
                            meta_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0))
    got = {i.update: i.meta_grad for i in (fwd.step(b) for b in batches) if i.meta_grad is not None}
    assert sorted(got) == [3, 6, 9]
    for t, g in got.items():
        full = _learner(_net(8), t, lr=0.02, beta=0.2, optimizer=optimizer)
        ref = [full.step(b) for b in batches[: t + 1]][t].meta_grad
        full.close()
        for name in ("log_lr", "logit_beta"):
            assert abs(float(ref[name])) > 1e-6
            assert float(g[name]) == pytest.approx(float(ref[name]), rel=1e-9, abs=1e-14), (t, name)


def test_forward_mode_population_equals_independent_learners():
    S, steps = 2, 7
    data = [_batches(steps, seed=30 + i) for i in range(S)]
    model = _net(0)
    inner_loss, meta_loss, spec = _problem(model)
    inner = InnerLoop(inner_loss, steps=2, popart=spec)

    def meta():
        return MetaParameters(lr=0.05, beta=0.2, learn=("lr", "beta"), dtype=D)

    singles = []
    for i in range(S):
        one = OnlineMetaLearner(model, inner, meta(), meta_loss, popart_state=pa.init(1, dtype=D), mode="forward",
                                meta_lr=5e-2)
        for b in data[i]:
            one.step(b)
        singles.append(one.values())
    state = pa.PopArtState(*(t.reshape(S, 1) for t in pa.init(S, dtype=D)))
    pop = OnlineMetaLearner(model, inner, meta(), meta_loss, popart_state=state, learners=S, mode="forward",
                            meta_lr=5e-2)
    for t in range(steps):
        pop.step(tuple(torch.stack([data[i][t][j] for i in range(S)]) for j in range(2)))
    for i in range(S):
        for key in ("lr", "beta"):
            assert float(pop.values()[key][i]) == pytest.approx(float(singles[i][key]), rel=1e-10)
            assert float(singles[i][key]) != pytest.approx(0.05 if key == "lr" else 0.2, rel=1e-4)


def test_forward_mode_needs_the_func_engine():
    model = _net()
    inner_loss, meta_loss, spec = _problem(model)
    with pytest.raises(ValueError, match="engine must be 'func'"):
        OnlineMetaLearner(model, InnerLoop(inner_loss, popart=spec), MetaParameters(dtype=D), meta_loss,
                          popart_state=pa.init(1, dtype=D), mode="forward", engine="higher")


# ------------------------------------------------------------------------------------------------- A2C
def _a2c_setup(steps: int):
    """One TabularMDP task whose reward scale jumps (x1, x30, x0.3), fixed trajectories per update (float64)."""
    from metaopt import rl
    from metaopt.envs.batched import BatchedTabularMDP
    from metaopt.envs.tabular_mdp import sample_tasks

    torch.manual_seed(0)
    model = rl.ActorCritic(hidden=8, dtype=D)
    tasks = sample_tasks(1, seed=2, dtype=D)
    g = torch.Generator().manual_seed(5)
    batches = []
    for t in range(steps):
        scale = (1.0, 30.0, 0.3)[(t // 3) % 3]
        sim = BatchedTabularMDP(tasks._replace(reward_means=tasks.reward_means * scale), dtype=D)
        traj = sim.rollout(lambda obs: functional_call(model, dict(model.named_parameters()), (obs,))[0].detach(),
                           sim.draw_noise(4, generator=g))
        batches.append({k: v[0] for k, v in rl.task_major(traj).items()})
    cfg = rl.A2CConfig(policy_coef=1.0)

    def meta_loss(p, batch, s):  # real units over sg(sigma): the inflation-proof form
        terms = rl.a2c_terms(model, p, batch, s, cfg, value_units="sg_scale")
        return terms.policy + 0.5 * terms.value

    inner = rl.make_inner_loop(model, popart=True, steps=3, cfg=cfg, debias=False, first_pop=True)
    return model, inner, meta_loss, batches


def test_a2c_online_engines_agree_and_forward_mode_is_the_full_gradient():
    model, inner, meta_loss, batches = _a2c_setup(10)

    def run(engine, mode="truncated", window=3, n=10):
        inner_k = InnerLoop(inner.loss, steps=window, popart=inner.popart)
        learner = OnlineMetaLearner(model, inner_k, MetaParameters(lr=0.05, beta=0.1, learn=("lr", "beta"), dtype=D),
                                    meta_loss, engine=engine, popart_state=pa.init(1, dtype=D), mode=mode,
                                    meta_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0))
        infos = [learner.step(b) for b in batches[:n]]
        learner.close()
        return {i.update: torch.stack(list(i.meta_grad.values())) for i in infos if i.meta_grad is not None}

    ref = run("func")
    assert sorted(ref) == [3, 6, 9] and all(torch.isfinite(g).all() and g.abs().min() > 0 for g in ref.values())
    for engine in ("higher", "torchopt"):
        for t, g in run(engine).items():
            torch.testing.assert_close(g, ref[t], rtol=1e-8, atol=1e-12)
    fwd = run("func", mode="forward")
    full = run("func", window=9)[9]
    torch.testing.assert_close(fwd[9], full, rtol=1e-8, atol=1e-12)


def test_online_a2c_example_runs_and_learns(tmp_path):
    import csv
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "online_a2c.py"
    spec = importlib.util.spec_from_file_location("_example_online_a2c", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    out = tmp_path / "m.csv"
    ret = module.main(["--updates", "12", "--period", "4", "--trajectories", "4", "--truncation", "3",
                       "--log-every", "6", "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and math.isfinite(ret)
    assert len({r["scale"] for r in rows}) == 3  # redrawn every 4 updates
    assert [float(r["beta"]) for r in rows[:3]] == pytest.approx([0.01] * 3)  # fixed during the first window
    assert float(rows[-1]["beta"]) != pytest.approx(0.01, rel=1e-4) and float(rows[-1]["lr"]) != pytest.approx(0.1)


def _load_benchmark(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_online_fig1a_benchmark_tiny_run_writes_grid_and_targets(tmp_path, capsys):
    import json

    bench = _load_benchmark("online_fig1a")
    assert bench.main(["--seeds", "2", "--steps", "30", "--configs", "far", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "online_fig1a.json").read_text())
    assert len(res["grid"]) == len(bench.LOG_BETAS) * len(bench.LOG_LRS)
    assert min(c["rmse_inliers"]["median"] for c in res["grid"]) == res["best_cell"]["rmse_inliers"]["median"]
    assert set(res["targets"]) == {"far_within_15pct_of_best", "paper_start_within_5pct_of_paper"}
    assert res["learned"]["far"]["diverged_seeds"] == 0 and "| far |" in capsys.readouterr().out
    assert bench.main(["--configs", "nope", "--out", str(tmp_path / "x")]) == 2


def test_online_a2c_benchmark_tiny_run(tmp_path):
    import json

    bench = _load_benchmark("online_a2c")
    assert bench.main(["--seeds", "2", "--updates", "6", "--period", "3", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "online_a2c.json").read_text())
    assert len(res["runs"]) == len(bench.BETAS) * len(bench.LRS) + 1
    learned = res["runs"]["learned (start b=0.01 lr=0.1)"]
    assert learned["learned_minus_this"] is None and learned["final_lr"] != 0.1
    fixed = res["runs"]["fixed b=0.01 lr=0.1"]
    diff = fixed["learned_minus_this"]
    assert fixed["final_lr"] == pytest.approx(0.1) and diff["lo"] <= diff["mean"] <= diff["hi"]
